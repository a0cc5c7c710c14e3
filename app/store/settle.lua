-- Record the outcome of one delivery attempt.
--
-- KEYS[1] in flight;  KEYS[2] ready;  KEYS[3] dead letters;  KEYS[4] state;  KEYS[5] the delivery
-- KEYS[6] the stats hash
-- ARGV[1] outcome: delivered | retry | dead | gone
-- ARGV[2] delivery id;  ARGV[3] now, ms;  ARGV[4] due time of the retry, ms
-- ARGV[5] HTTP status ("" when none);  ARGV[6] error ("" when none);  ARGV[7] subscription id
--
-- A delivery no longer in flight nor ready was taken over by another process (its lease had
-- expired): that process settles it, this one changes nothing. Returns 1 if settled, else 0.
local outcome, id, now = ARGV[1], ARGV[2], ARGV[3]
if redis.call('ZREM', KEYS[1], id) == 0 and redis.call('ZREM', KEYS[2], id) == 0 then
    return 0
end
local sub = ARGV[7]
if outcome == 'delivered' then
    redis.call('DEL', KEYS[5])
    redis.call('HINCRBY', KEYS[6], sub .. ':delivered', 1)
    return 1
end
redis.call('HINCRBY', KEYS[5], 'attempts', 1)
redis.call('HSET', KEYS[5], 'lastStatus', ARGV[5], 'lastError', ARGV[6], 'lastAttemptMs', now)
if outcome == 'retry' then
    redis.call('ZADD', KEYS[2], ARGV[4], id)
    redis.call('HINCRBY', KEYS[6], sub .. ':retried', 1)
elseif outcome == 'dead' then
    redis.call('HSET', KEYS[5], 'deadMs', now)
    redis.call('ZADD', KEYS[3], now, id)
    redis.call('HINCRBY', KEYS[6], sub .. ':dead', 1)
elseif outcome == 'gone' then
    redis.call('ZADD', KEYS[2], now, id)
    redis.call('HSET', KEYS[4], 'state', 'disabled', 'reason', ARGV[6], 'changedMs', now)
end
return 1
