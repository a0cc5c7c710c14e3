-- An operator's "retry now": close the subscription's circuit breaker (its failures forgotten:
-- state_reset_breaker, state.lua) and make its waiting deliveries due now.
--
-- KEYS[1]  the subscription's state hash
-- KEYS[2]  its ready set (score: due time, ms)
-- ARGV[1]  now, ms
-- ARGV[2]  at most this many deliveries made due in one run: the caller runs the script again
--          while a run makes that many due (those made due are due at `now`, not after it)
--
-- Only the ready set changes. A per-order subscription keeps only each order's released
-- delivery there, so the deliveries held behind it (order.lua: base:o:<ord>, reorder windows in
-- base:hold) stay held; deliveries in flight keep their leases. A disabled subscription stays
-- disabled (a replay enables it).
-- Returns {the breaker before: closed | open | half-open, deliveries made due, the state:
-- enabled | disabled}.
local before = redis.call('HGET', KEYS[1], 'breaker') or 'closed'
state_reset_breaker(KEYS[1])
local later = redis.call('ZRANGEBYSCORE', KEYS[2], '(' .. ARGV[1], '+inf', 'LIMIT', 0, ARGV[2])
for _, id in ipairs(later) do
    redis.call('ZADD', KEYS[2], 'XX', ARGV[1], id)
end
return {before, #later, redis.call('HGET', KEYS[1], 'state') or 'enabled'}
