-- Put deliveries whose lease expired (their process died) back in the ready set, due now.
--
-- KEYS[1] in flight;  KEYS[2] ready
-- ARGV[1] now, ms
-- Returns how many were put back.
local expired = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, 1000)
for _, id in ipairs(expired) do
    redis.call('ZREM', KEYS[1], id)
    redis.call('ZADD', KEYS[2], ARGV[1], id)
end
return #expired
