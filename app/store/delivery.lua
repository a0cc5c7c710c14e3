-- A delivery's hash (K.delivery, fields D) and its moves shared by several scripts; prepended
-- to every delivery script (one copy).

-- A new delivery: its hash, and its place in the subscription's age set (oldest undelivered).
local function delivery_create(key, id, sub, event_id, order_id, event, now)
    redis.call('HSET', key, D.id, id, D.sub, sub, D.eventId, event_id, D.orderId, order_id,
        D.event, event, D.attempts, 0, D.createdMs, now)
    redis.call('ZADD', K.pending_age(sub), now, id)
end

-- Dead-lettered (no longer in ready nor in flight): in the dead-letter queue by when it died,
-- no longer undelivered-and-waiting, and counted.
local function delivery_dead(key, sub, id, now)
    redis.call('HSET', key, D.deadMs, now)
    redis.call('ZADD', K.dlq(sub), now, id)
    redis.call('ZREM', K.pending_age(sub), id)
    redis.call('HINCRBY', K.stats, stat(sub, C.dead), 1)
end
