-- Route a batch of ingest entries: create each entry's deliveries and acknowledge it, atomically.
--
-- KEYS[1]  the ingest stream
-- ARGV[1]  the router's consumer group
-- ARGV[2]  now, in milliseconds
-- ARGV[3]  the key tag, e.g. "{orderhook}": every key of this prefix starts with it
-- ARGV[5]  the delivery log's retention, in seconds
-- ARGV[4]  JSON: [[entry id, [[delivery id, subscription, event id, order id, event JSON,
--          lease expiry ms, ordered, error, fired], ...], event id, order id, event JSON], ...];
--          a lease expiry of 0 queues the delivery as ready, any other puts it straight in
--          flight, claimed by this process's own worker (unless the subscription is disabled or
--          its breaker is not closed: then it waits in the ready set). `ordered` is 0, or for a
--          per-order subscription [order key, position, reorder window ms, drop stale 0|1]:
--          the delivery waits its turn in its order (order.lua), in flight only if released
--          at once. `error` is "" or why the router could not plan the delivery: it is
--          dead-lettered at once with that reason. `fired` is 0, or for a single-fire filter
--          (FromOrders without disableSingleFire) [the order's fired key (app/store/keys.py),
--          its retention in seconds]: only the order's first matching event makes a delivery.
--
-- Total: a delivery that fails here (a malformed position, a bad value) is dead-lettered with
-- the error as its reason, out of its order's line; the entry's other deliveries, the batch's
-- other entries and the order's later events go on.
-- Each routed event is kept (ev:<id>) and indexed by order id for the retention, for the
-- delivery log; each new delivery joins its subscription's age set (oldest undelivered).
-- An entry already acknowledged (by another router that reclaimed it) creates nothing.
-- Delivery keys are built from the tag: they share its hash slot with KEYS[1].
-- ARGV[6]  the dedupe window, in seconds: how long an order's routed count is kept
-- Returns {the ids of the deliveries created in flight (claimed), the entry ids deferred}.
local group, now, tag, retention, window = ARGV[1], ARGV[2], ARGV[3], ARGV[5], ARGV[6]
local claimed, deferred = {}, {}

-- An entry numbered by ingest (`seq`, `ord`: some subscription orders per order) is routed only
-- after its order's earlier entries, whichever router took them: else it is deferred (left
-- pending, for this router to try again), so the order's line gets its events in the order
-- they were appended even when two processes route at once.
-- Returns whether the entry may be routed now, and the order's routed count to set once it is.
local function turn(entry_id)
    local found = redis.call('XRANGE', KEYS[1], entry_id, entry_id)[1]
    if not found then
        return true
    end
    local seq, ord
    local fields = found[2]
    for j = 1, #fields, 2 do
        if fields[j] == 'seq' then
            seq = tonumber(fields[j + 1])
        elseif fields[j] == 'ord' then
            ord = fields[j + 1]
        end
    end
    if not seq then
        return true
    end
    local key = tag .. ':orouted:' .. ord
    local routed = tonumber(redis.call('GET', key) or '0')
    if routed < seq - 1 then
        return false
    end
    return true, key, math.max(routed, seq)
end

-- Single fire: the order's first matching event for this subscription sets its fired key (SET
-- NX: one script runs at a time, so two routers, a retried notification or a late earlier
-- event cannot both fire); a later one finds it, renews its retention, and makes no delivery,
-- counted as `<sub>:single_fire_suppressed`. Returns whether the delivery may be created.
local function first_fire(d)
    local fired = d[9]
    if fired == 0 then
        return true
    end
    if redis.call('SET', fired[1], d[3], 'NX', 'EX', fired[2]) then
        return true
    end
    redis.call('EXPIRE', fired[1], fired[2])
    redis.call('HINCRBY', K.stats, stat(d[2], C.single_fire_suppressed), 1)
    return false
end

-- Create one delivery; returns 'claimed' (in flight, claimed by this process), 'queued' (ready,
-- or in its order's line) or 'suppressed' (single fire: none made). Raises on a value it cannot
-- handle; route_failed then dead-letters it (single fire decided first: a suppressed delivery
-- is never dead-lettered, a first one that fails is, and its replay is the order's one fire).
local function create(d, key)
    if not first_fire(d) then
        return 'suppressed'
    end
    if d[8] ~= '' then
        error(d[8], 0)
    end
    local base = tag .. ':s:' .. d[2]
    redis.call('HSET', key, 'id', d[1], 'sub', d[2], 'eventId', d[3], 'orderId', d[4],
        'event', d[5], 'attempts', 0, 'createdMs', now)
    redis.call('ZADD', base .. ':age', now, d[1])
    local state = redis.call('HMGET', base .. ':state', 'state', 'breaker')
    local lease = 0
    if d[6] > 0 and state[1] ~= 'disabled' and (not state[2] or state[2] == 'closed') then
        lease = d[6]
    end
    if d[7] ~= 0 then
        local ord, pos = d[7][1], d[7][2]
        if type(ord) ~= 'string' or order_pos(pos) == nil then
            error('not a valid order position: ' .. cjson.encode(d[7]), 0)
        end
        redis.call('HSET', key, 'ord', ord, 'pos', pos, 'win', d[7][3], 'stale', d[7][4])
        redis.call('ZADD', base .. ':o:' .. ord, 0, pos)
        if order_release(tag, d[2], ord, tonumber(now), d[1], lease) ~= nil then
            return 'claimed'
        end
        return 'queued'
    elseif lease > 0 then
        redis.call('ZADD', base .. ':inflight', lease, d[1])
        return 'claimed'
    end
    redis.call('ZADD', base .. ':ready', now, d[1])
    return 'queued'
end

-- A delivery `create` failed on: dead-lettered at once with the error as its reason (visible in
-- /admin/dlq), unordered (a replay sends it without waiting for its order), and out of its
-- order's line, so that the order's other events go on.
local function route_failed(d, key, err)
    local reason = 'not routed: ' .. (type(err) == 'table' and tostring(err.err) or tostring(err))
    local base = tag .. ':s:' .. d[2]
    redis.call('HSET', key, 'id', d[1], 'sub', d[2], 'eventId', d[3], 'orderId', d[4],
        'event', d[5], 'attempts', 0, 'createdMs', now, 'lastError', reason,
        'lastAttemptMs', now, 'deadMs', now)
    redis.call('HDEL', key, 'ord', 'pos', 'win', 'stale')
    redis.call('ZREM', base .. ':ready', d[1])
    redis.call('ZREM', base .. ':inflight', d[1])
    redis.call('ZREM', base .. ':age', d[1])
    redis.call('ZADD', base .. ':dlq', now, d[1])
    redis.call('HINCRBY', tag .. ':stats', d[2] .. ':dead', 1)
    local ord = type(d[7]) == 'table' and d[7][1]
    if type(ord) == 'string' then
        if type(d[7][2]) == 'string' then
            redis.call('ZREM', base .. ':o:' .. ord, d[7][2])
        end
        if redis.call('GET', base .. ':oh:' .. ord) == d[1] then
            redis.call('DEL', base .. ':oh:' .. ord)
        end
        pcall(order_release, tag, d[2], ord, tonumber(now), '', 0)
    end
    redis.log(redis.LOG_WARNING, 'orderhook: delivery ' .. d[1] .. ' dead-lettered: ' .. reason)
end

for _, entry in ipairs(cjson.decode(ARGV[4])) do
    local may, counter, count = turn(entry[1])
    if not may then
        deferred[#deferred + 1] = entry[1]
    elseif redis.call('XACK', KEYS[1], group, entry[1]) == 1 then
        if counter then
            redis.call('SET', counter, count, 'EX', window)
        end
        redis.call('SET', tag .. ':ev:' .. entry[3], entry[5], 'EX', retention)
        redis.call('SADD', tag .. ':order:' .. entry[4], entry[3])
        redis.call('EXPIRE', tag .. ':order:' .. entry[4], retention)
        for _, d in ipairs(entry[2]) do
            local key = tag .. ':d:' .. d[1]
            if redis.call('EXISTS', key) == 0 then
                local ok, result = pcall(create, d, key)
                if not ok then
                    route_failed(d, key, result)
                elseif result == 'claimed' then
                    claimed[#claimed + 1] = d[1]
                end
            end
        end
        redis.call('XDEL', KEYS[1], entry[1])
    end
end
return {claimed, deferred}
