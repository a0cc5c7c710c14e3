-- Take up to maxlot items from a pull subscription's queue, as VTEX's Feed v3 does: they are
-- hidden for the visibility timeout, and come back unless committed.
--
-- ARGV[1]  JSON: {sub, now (ms), hiddenUntil (ms), maxlot, retentionMs}
-- The subscription's ready set holds its items by creation time; its in-flight set the hidden
-- ones, by the time they become visible again.
--
-- First hidden items whose time is up come back; then items older than the retention are
-- dropped and counted (C.expired). Returns {{delivery id, event JSON}, ...}.
local args = cjson.decode(ARGV[1])
local sub, now = args.sub, args.now
local ready, hidden = K.ready(sub), K.inflight(sub)
for _, id in ipairs(redis.call('ZRANGEBYSCORE', hidden, '-inf', now, 'LIMIT', 0, 1000)) do
    redis.call('ZREM', hidden, id)
    local created = redis.call('HGET', K.delivery(id), D.createdMs)
    if created then
        redis.call('ZADD', ready, created, id)
    end
end
local oldest = now - args.retentionMs
for _, id in ipairs(redis.call('ZRANGEBYSCORE', ready, '-inf', '(' .. oldest, 'LIMIT', 0, 1000)) do
    redis.call('ZREM', ready, id)
    redis.call('DEL', K.delivery(id))
    redis.call('ZREM', K.pending_age(sub), id)
    redis.call('HINCRBY', K.stats, stat(sub, C.expired), 1)
end
local items = {}
for _, id in ipairs(redis.call('ZRANGEBYSCORE', ready, '-inf', now, 'LIMIT', 0, args.maxlot)) do
    redis.call('ZREM', ready, id)
    local event = redis.call('HGET', K.delivery(id), D.event)
    if event then
        redis.call('ZADD', hidden, args.hiddenUntil, id)
        items[#items + 1] = {id, event}
    end
end
return items
