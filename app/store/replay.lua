-- Requeue dead-lettered deliveries with a fresh schedule, and enable their subscriptions. A
-- per-order delivery goes back in its order's line (order.lua).
--
-- ARGV[1] the key tag;  ARGV[2] now, ms;  ARGV[3..] delivery ids
-- Keys are built from the tag (one hash slot). Ids not in their dead-letter queue are skipped.
-- Returns the number requeued.
local tag, now = ARGV[1], ARGV[2]
local count = 0
for i = 3, #ARGV do
    local key = tag .. ':d:' .. ARGV[i]
    local sub = redis.call('HGET', key, 'sub')
    if sub and redis.call('ZREM', tag .. ':s:' .. sub .. ':dlq', ARGV[i]) == 1 then
        -- replayed: an ordered one is sent whatever drop_stale says (order.lua); settle.lua
        -- leaves its time in the dead-letter queue out of the latency figures
        redis.call('HSET', key, 'attempts', 0, 'replayed', '1')
        redis.call('HDEL', key, 'deadMs')
        local ordered = redis.call('HMGET', key, 'ord', 'pos')
        if ordered[1] then -- back in its order's line
            local base = tag .. ':s:' .. sub
            redis.call('SREM', base .. ':od:' .. ordered[1], ARGV[i])
            redis.call('ZADD', base .. ':o:' .. ordered[1], 0, ordered[2])
            order_release(tag, sub, ordered[1], tonumber(now), '', 0)
        else
            redis.call('ZADD', tag .. ':s:' .. sub .. ':ready', now, ARGV[i])
        end
        redis.call('ZADD', tag .. ':s:' .. sub .. ':age', now, ARGV[i])
        state_enable(tag .. ':s:' .. sub .. ':state', now)
        count = count + 1
    end
end
return count
