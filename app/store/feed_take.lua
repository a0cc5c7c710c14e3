-- Take up to maxlot items from a pull subscription's queue, as VTEX's Feed v3 does: they are
-- hidden for the visibility timeout, and come back unless committed.
--
-- KEYS[1]  the subscription's ready set (score: creation time, ms)
-- KEYS[2]  its hidden set (score: the time the items become visible again, ms)
-- KEYS[3]  the stats hash
-- ARGV[1]  now, ms;  ARGV[2] hidden until, ms;  ARGV[3] maxlot;  ARGV[4] the key tag
-- ARGV[5]  the retention, ms;  ARGV[6] the subscription id
--
-- First hidden items whose time is up come back; then items older than the retention are
-- dropped and counted (`<sub>:expired`). Returns {{delivery id, event JSON}, ...}.
local now, hidden_until, tag, sub = tonumber(ARGV[1]), ARGV[2], ARGV[4], ARGV[6]
for _, id in ipairs(redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now, 'LIMIT', 0, 1000)) do
    redis.call('ZREM', KEYS[2], id)
    local created = redis.call('HGET', tag .. ':d:' .. id, 'createdMs')
    if created then
        redis.call('ZADD', KEYS[1], created, id)
    end
end
local oldest = now - tonumber(ARGV[5])
for _, id in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', '(' .. oldest, 'LIMIT', 0, 1000)) do
    redis.call('ZREM', KEYS[1], id)
    redis.call('DEL', tag .. ':d:' .. id)
    redis.call('ZREM', tag .. ':s:' .. sub .. ':age', id)
    redis.call('HINCRBY', KEYS[3], sub .. ':expired', 1)
end
local items = {}
for _, id in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, tonumber(ARGV[3]))) do
    redis.call('ZREM', KEYS[1], id)
    local event = redis.call('HGET', tag .. ':d:' .. id, 'event')
    if event then
        redis.call('ZADD', KEYS[2], hidden_until, id)
        items[#items + 1] = {id, event}
    end
end
return items
