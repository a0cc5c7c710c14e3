-- Per-order delivery, for subscriptions with ordering = "per-order" (app/ordering). Prepended
-- to the scripts that create, claim, settle and replay deliveries (one copy of the rules), after
-- the schema's prelude and the position's constants (app/ordering/position.py lua_constants).
-- The other scripts call only the hooks at the end of this file.
--
-- For one subscription `sub` and one order `ord` (app/events.py's order_key), the keys
-- (app/store/schema.py): K.order_waiting(sub, ord), the order's deliveries waiting their turn,
-- by position; K.order_head(sub, ord), the one released; K.order_last(sub, ord), the ticks of
-- the last delivered; K.order_dead(sub, ord), its dead-lettered ones; K.order_hold(sub), orders
-- by when their first waiting delivery's reorder window ends. An ordered delivery's hash also
-- holds D.ord, D.pos, D.win (reorder window, ms) and D.stale ("1": drop it when older than the
-- last delivered), and D.replayed once replayed by hand.

-- A position's parts (app/ordering/position.py decode, by the separator): its change ticks
-- (text: fixed width, compared as text, as 17 digits are beyond a Lua number's exact range),
-- its receipt in ms and its delivery id (which may hold the separator); nil when it is not one.
local POSITION = '^(' .. string.rep('%d', POSITION_TICKS_DIGITS) .. ')%' .. POSITION_SEPARATOR
    .. '(' .. string.rep('%d', POSITION_MS_DIGITS) .. ')%' .. POSITION_SEPARATOR .. '(.+)$'
local function order_pos(pos)
    if type(pos) ~= 'string' then
        return nil
    end
    local ticks, ms, id = string.match(pos, POSITION)
    if not id then
        return nil
    end
    return ticks, tonumber(ms), id
end

local function iso_from_ms(ms)
    local s = math.floor(ms / 1000)
    local days = math.floor(s / 86400)
    local rem = s - days * 86400
    local z = days + 719468 -- civil_from_days (H. Hinnant)
    local era = math.floor(z / 146097)
    local doe = z - era * 146097
    local yoe = math.floor((doe - math.floor(doe / 1460) + math.floor(doe / 36524)
        - math.floor(doe / 146096)) / 365)
    local doy = doe - (365 * yoe + math.floor(yoe / 4) - math.floor(yoe / 100))
    local mp = math.floor((5 * doy + 2) / 153)
    local day = doy - math.floor((153 * mp + 2) / 5) + 1
    local month = mp < 10 and mp + 3 or mp - 9
    local year = yoe + era * 400 + (month <= 2 and 1 or 0)
    return string.format('%04d-%02d-%02dT%02d:%02d:%02d.%03d000Z', year, month, day,
        math.floor(rem / 3600), math.floor(rem % 3600 / 60), rem % 60, ms % 1000)
end

-- A stale delivery is not attempted: it is logged and counted as stale, then dropped.
local function order_drop_stale(sub, id, key, now)
    local d = redis.call('HMGET', key, D.eventId, D.orderId)
    local record = cjson.encode({
        at = iso_from_ms(now), subscription = sub, deliveryId = id, eventId = d[1],
        orderId = d[2], attempt = 0, outcome = 'stale', status = cjson.null,
        error = 'older than the last event delivered for this order; not sent (drop_stale)',
        durationMs = 0, response = ''
    })
    local log = K.event_log(d[1])
    redis.call('LPUSH', log, record)
    redis.call('LTRIM', log, 0, 99)
    local ttl = redis.call('TTL', K.event(d[1]))
    if ttl > 0 then
        redis.call('EXPIRE', log, ttl)
    end
    redis.call('LPUSH', K.recent_attempts, record)
    redis.call('LTRIM', K.recent_attempts, 0, 199)
    redis.call('HINCRBY', K.stats, stat(sub, C.stale), 1)
    redis.call('ZREM', K.pending_age(sub), id)
    redis.call('DEL', key)
end

-- The order's released delivery goes: straight in flight under `lease` when it is
-- `claimable` (returns true), else to the ready set, due at its receipt: it keeps its place
-- among the deliveries received after it.
local function order_go(sub, ord, id, received, now, claimable, lease)
    redis.call('ZREM', K.order_hold(sub), ord)
    redis.call('SET', K.order_head(sub, ord), id)
    if lease > 0 and id == claimable then
        redis.call('ZADD', K.inflight(sub), lease, id)
        return true
    end
    redis.call('ZADD', K.ready(sub), math.min(now, received), id)
    return false
end

-- Release the order's next delivery, unless one is out or the next one's window is not over.
-- `lease` > 0 and the released delivery is `claimable`: it goes straight in flight under that
-- lease (the caller starts it); otherwise to the ready set. Returns the id put in flight, or nil.
local function order_release(sub, ord, now, claimable, lease)
    if redis.call('EXISTS', K.order_head(sub, ord)) == 1 then
        return nil
    end
    local waiting = K.order_waiting(sub, ord)
    while true do
        local pos = redis.call('ZRANGE', waiting, 0, 0)[1]
        if not pos then
            redis.call('ZREM', K.order_hold(sub), ord)
            return nil
        end
        local ticks, received, id = order_pos(pos)
        local key = id and K.delivery(id)
        local d = id and redis.call('HMGET', key, D.win, D.stale, D.replayed) or {}
        local due = id and received + (tonumber(d[1]) or 0) or 0
        if due > now and d[3] ~= '1' then
            redis.call('ZADD', K.order_hold(sub), due, ord)
            return nil
        end
        redis.call('ZREM', waiting, pos)
        local last = redis.call('GET', K.order_last(sub, ord))
        if not id then -- route.lua lets no malformed position in; one found anyway is dropped
            redis.log(redis.LOG_WARNING, 'orderhook: dropped a malformed order position')
        elseif d[2] == '1' and d[3] ~= '1' and last and ticks < last then
            order_drop_stale(sub, id, key, now)
        elseif redis.call('EXISTS', key) == 1 then
            if order_go(sub, ord, id, received, now, claimable, lease) then
                return id
            end
            return nil
        end
    end
end

-- The order's delivered deliveries overtook its dead-lettered ones: each dead one still in the
-- dead-letter queue notes `event` (up to 100), the others leave the order's dead set.
local function order_overtaken(sub, ord, event)
    local deadset = K.order_dead(sub, ord)
    for _, dead in ipairs(redis.call('SMEMBERS', deadset)) do
        local dkey = K.delivery(dead)
        if redis.call('ZSCORE', K.dlq(sub), dead) then
            local over = redis.call('HGET', dkey, D.overtakenBy)
            local count = over and select(2, string.gsub(over, ',', ',')) + 1 or 0
            if count < 100 then
                redis.call('HSET', dkey, D.overtakenBy, over and (over .. ',' .. event) or event)
            end
        else
            redis.call('SREM', deadset, dead)
        end
    end
end

-- An ordered delivery was delivered or dead-lettered: the order's next one may go.
local function order_settled(sub, id, event, ord, pos, delivered, now, retention)
    if delivered then
        local ticks = order_pos(pos)
        local last = redis.call('GET', K.order_last(sub, ord))
        if ticks and (not last or last < ticks) then
            last = ticks
        end
        if last then
            redis.call('SET', K.order_last(sub, ord), last, 'EX', retention)
        end
        order_overtaken(sub, ord, event)
    else
        redis.call('SADD', K.order_dead(sub, ord), id)
        redis.call('EXPIRE', K.order_dead(sub, ord), retention)
    end
    if redis.call('GET', K.order_head(sub, ord)) == id then
        redis.call('DEL', K.order_head(sub, ord))
    end
    order_release(sub, ord, now, '', 0)
end


-- ── The hooks: the ordering's whole interface to the other scripts ─────────────────────────

-- route.lua: may the ingest entry `entry_id` be routed now? An entry numbered by ingest
-- (E.seq, E.ord) is routed only after its order's earlier entries, whichever router took
-- them: else it is deferred (left pending, for this router to try again), so the order's line
-- gets its events in the order they were appended even when two processes route at once.
-- Returns whether it may, and a function to call once it is routed (it records the count, kept
-- for `window_s`).
local function ordering_turn(stream, entry_id, window_s)
    local noop = function() end
    local found = redis.call('XRANGE', stream, entry_id, entry_id)[1]
    if not found then
        return true, noop
    end
    local seq, ord
    local fields = found[2]
    for j = 1, #fields, 2 do
        if fields[j] == E.seq then
            seq = tonumber(fields[j + 1])
        elseif fields[j] == E.ord then
            ord = fields[j + 1]
        end
    end
    if not seq then
        return true, noop
    end
    local key = K.order_routed(ord)
    local routed = tonumber(redis.call('GET', key) or '0')
    if routed < seq - 1 then
        return false, noop
    end
    return true, function()
        redis.call('SET', key, math.max(routed, seq), 'EX', window_s)
    end
end

-- route.lua: a new delivery joins its order's line: `ordered` is {position, windowMs,
-- dropStale} (app/ordering). Raises on a malformed one (route.lua dead-letters it). Returns
-- 'claimed' when released at once in flight under `lease`, else 'queued'.
local function ordering_enqueue(sub, id, key, ord, ordered, now, lease)
    local pos = ordered.position
    if type(ord) ~= 'string' or order_pos(pos) == nil then
        error('not a valid order position: ' .. cjson.encode(ordered), 0)
    end
    redis.call('HSET', key, D.ord, ord, D.pos, pos, D.win, tonumber(ordered.windowMs) or 0,
        D.stale, ordered.dropStale and '1' or '0')
    redis.call('ZADD', K.order_waiting(sub, ord), 0, pos)
    if order_release(sub, ord, tonumber(now), id, lease) ~= nil then
        return 'claimed'
    end
    return 'queued'
end

-- route.lua: a delivery that could not be created leaves its order's line, and the order's
-- next one may go.
local function ordering_unroute(sub, id, ord, ordered, now)
    if type(ord) ~= 'string' then
        return
    end
    if type(ordered) == 'table' and type(ordered.position) == 'string' then
        redis.call('ZREM', K.order_waiting(sub, ord), ordered.position)
    end
    if redis.call('GET', K.order_head(sub, ord)) == id then
        redis.call('DEL', K.order_head(sub, ord))
    end
    pcall(order_release, sub, ord, tonumber(now), '', 0)
end

-- claim.lua: orders whose reorder window is over release their next delivery to the ready set.
-- Returns when the next window ends (ms), or nil when no order waits for one.
local function ordering_release_due(sub, now)
    local hold = K.order_hold(sub)
    for _, ord in ipairs(redis.call('ZRANGEBYSCORE', hold, '-inf', now, 'LIMIT', 0, 1000)) do
        order_release(sub, ord, now, '', 0)
    end
    local held = redis.call('ZRANGE', hold, 0, 0, 'WITHSCORES')[2]
    return held and tonumber(held) or nil
end

-- settle.lua: the delivery `id` (hash `key`) of event `event_id` was delivered, or dead-lettered
-- (`delivered` false): if it is ordered, its order's next one may go.
local function ordering_settled(key, sub, id, event_id, delivered, now, retention)
    local ordered = redis.call('HMGET', key, D.ord, D.pos)
    if ordered[1] then
        order_settled(sub, id, event_id, ordered[1], ordered[2], delivered, now, retention)
    end
end

-- replay.lua: a dead-lettered delivery goes back: an ordered one in its order's line (returns
-- true), any other not (returns false: the caller makes it ready).
local function ordering_requeue(key, sub, id, now)
    local ordered = redis.call('HMGET', key, D.ord, D.pos)
    if not ordered[1] then
        return false
    end
    redis.call('SREM', K.order_dead(sub, ordered[1]), id)
    redis.call('ZADD', K.order_waiting(sub, ordered[1]), 0, ordered[2])
    order_release(sub, ordered[1], tonumber(now), '', 0)
    return true
end
