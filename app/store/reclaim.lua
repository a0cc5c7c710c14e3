-- Put deliveries whose lease expired (their process died) back in the ready set, due now.
--
-- ARGV[1]  the subscription id;  ARGV[2] now, ms
-- Returns how many were put back.
local inflight, ready = K.inflight(ARGV[1]), K.ready(ARGV[1])
local expired = redis.call('ZRANGEBYSCORE', inflight, '-inf', ARGV[2], 'LIMIT', 0, 1000)
for _, id in ipairs(expired) do
    redis.call('ZREM', inflight, id)
    redis.call('ZADD', ready, ARGV[2], id)
end
return #expired
