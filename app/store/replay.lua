-- Requeue dead-lettered deliveries with a fresh schedule, and enable their subscriptions (a
-- paused one stays paused: state_revive). A
-- per-order delivery goes back in its order's line (ordering_requeue).
--
-- ARGV[1]  JSON: {now (ms), ids: [delivery id, ...]}
-- Ids not in their dead-letter queue are skipped. Returns the number requeued.
local args = cjson.decode(ARGV[1])
local now = args.now
local count = 0
for _, id in ipairs(args.ids) do
    local key = K.delivery(id)
    local sub = redis.call('HGET', key, D.sub)
    if sub and redis.call('ZREM', K.dlq(sub), id) == 1 then
        -- replayed: an ordered one is sent whatever drop_stale says (order.lua); settle.lua
        -- leaves its time in the dead-letter queue out of the latency figures
        redis.call('HSET', key, D.attempts, 0, D.replayed, '1')
        redis.call('HDEL', key, D.deadMs)
        if not ordering_requeue(key, sub, id, now) then
            redis.call('ZADD', K.ready(sub), now, id)
        end
        redis.call('ZADD', K.pending_age(sub), now, id)
        state_revive(sub, now)
        count = count + 1
    end
end
return count
