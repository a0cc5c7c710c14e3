-- An operator's "retry now": close the subscription's circuit breaker (its failures forgotten:
-- state_reset, state.lua) and make its waiting deliveries due now.
--
-- ARGV[1]  JSON: {sub, now (ms), chunk}: at most `chunk` deliveries made due in one run; the
--          caller runs the script again while a run makes that many due (those made due are
--          due at `now`, not after it)
--
-- Only the ready set changes. A per-order subscription keeps only each order's released
-- delivery there, so the deliveries held behind it (their order's line, reorder windows)
-- stay held; deliveries in flight keep their leases. A disabled subscription stays disabled
-- (a replay enables it).
-- Returns {the breaker before: closed | open | half-open, deliveries made due, the state:
-- enabled | disabled}.
local args = cjson.decode(ARGV[1])
local before = redis.call('HGET', K.state(args.sub), S.breaker) or BREAKER.closed
state_reset(args.sub)
local ready = K.ready(args.sub)
local later = redis.call('ZRANGEBYSCORE', ready, '(' .. args.now, '+inf', 'LIMIT', 0, args.chunk)
for _, id in ipairs(later) do
    redis.call('ZADD', ready, 'XX', args.now, id)
end
return {before, #later, redis.call('HGET', K.state(args.sub), S.state) or ENABLEMENT.enabled}
