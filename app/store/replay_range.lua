-- Replay of a time range, one chunk: make the chunk's deliveries again for one subscription,
-- and count the job's progress (K.job, fields J), atomically.
--
-- ARGV[1]     JSON, the chunk: {sub, job, now (ms), keepS, looked, deliveries: [{id, eventId,
--             orderId, order, ordered}]} (app/store/replays.py). `looked`: the events of the
--             range this chunk looked at (those matching the subscription's filter are
--             `deliveries`); `keepS`: how long the job's hash is kept from now; `ordered`, for
--             a per-order subscription: the delivery's place in its order ({position,
--             windowMs, dropStale}; app/ordering).
-- ARGV[1 + i] the i-th delivery's event JSON (kept as is: not decoded here)
--
-- A delivery whose id (the router's: event and subscription) still exists, pending or dead, is
-- skipped: it will be, or can be, delivered. Single fire is not asked: a replay is explicit.
-- Each new one is marked replayed (D.replayed), so a per-order one is neither held for its
-- reorder window nor dropped as stale (order.lua), and goes in its order's line; any other
-- goes to the ready set, due now (a pull subscription's too: its feed). A paused or disabled
-- subscription keeps them queued.
-- Nothing is made when the subscription is no longer in the catalog.
-- Returns {made, skipped, gone (1 when the subscription is gone)}.
local chunk = cjson.decode(ARGV[1])
local sub, now = chunk.sub, chunk.now
local job = K.job(chunk.job)

local function undo(key, id)
    redis.call('DEL', key)
    redis.call('ZREM', K.pending_age(sub), id)
end

local function make(d, event)
    local key = K.delivery(d.id)
    if redis.call('EXISTS', key) == 1 then
        return false
    end
    delivery_create(key, d.id, sub, d.eventId, d.orderId, event, now)
    redis.call('HSET', key, D.replayed, '1')
    if d.ordered == nil then
        redis.call('ZADD', K.ready(sub), now, d.id)
        return true
    end
    local ok, err = pcall(ordering_enqueue, sub, d.id, key, d.order, d.ordered, now, 0)
    if not ok then -- a position no rule foresaw: not made (the router dead-lettered it, if so)
        undo(key, d.id)
        redis.log(redis.LOG_WARNING, 'orderhook: replay of ' .. d.id .. ' not made: '
            .. tostring(err))
    end
    return ok
end

if redis.call('HEXISTS', K.subscriptions, sub) == 0 then
    return {0, 0, 1}
end
local made, skipped = 0, 0
for i, d in ipairs(chunk.deliveries) do
    if make(d, ARGV[1 + i]) then
        made = made + 1
    else
        skipped = skipped + 1
    end
end
redis.call('HINCRBY', job, J.done, chunk.looked)
redis.call('HINCRBY', job, J.replayed, made)
redis.call('HINCRBY', job, J.skipped, skipped)
redis.call('HSET', job, J.heartbeatMs, now)
redis.call('EXPIRE', job, chunk.keepS)
return {made, skipped, 0}
