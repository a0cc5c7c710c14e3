-- Route a batch of ingest entries: create each entry's deliveries and acknowledge it, atomically.
--
-- KEYS[1]     the ingest stream
-- ARGV[1]     JSON, the plan: {group, now (ms), retentionS, entries: [{entry, eventId, orderId,
--             order, receivedMs, trace, deliveries: [{id, sub, lease, rate, ordered, error,
--             singleFireS}]}]}
--             (app/store/routing.py). `group`: the router's consumer group; `retentionS`: the
--             delivery log's; `order`: the order key (app/events.py's order_key); `trace`
--             (optional): the trace context (a W3C traceparent) each delivery keeps in D.tp.
--             A delivery's `lease` of 0 queues it as ready, any other (ms) puts it straight in
--             flight, claimed by this process's own worker, if admission_lease admits it (`rate`:
--             its max_per_second; else it waits in the ready set). `ordered`, for a per-order subscription: its place in
--             its order ({position, windowMs, dropStale}; app/ordering). `error` is "" or why
--             the router could not plan the delivery: it is dead-lettered at once with that
--             reason. `singleFireS` is 0, or for a single-fire filter (FromOrders without
--             disableSingleFire) how long the order's first match is remembered: only the
--             order's first matching event makes a delivery.
-- ARGV[1 + i] the i-th entry's event JSON (kept as is: it is not decoded here)
--
-- Total: a delivery that fails here (a malformed position, a bad value) is dead-lettered with
-- the error as its reason, out of its order's line; the entry's other deliveries, the batch's
-- other entries and the order's later events go on.
-- Each routed event is kept (K.event) and indexed by order id and by when it was received
-- (K.received: what a replay of a time range reads) for the retention, for the delivery log;
-- each new delivery joins its subscription's age set (oldest undelivered). A delivery of a
-- subscription no longer in the catalog (deleted while this router's copy still had it) is
-- not made.
-- An entry already acknowledged (by another router that reclaimed it) creates nothing; one
-- whose order's earlier entry is not routed yet is deferred (ordering_turn).
-- Returns {the ids of the deliveries created in flight (claimed), the entry ids deferred}.
local plan = cjson.decode(ARGV[1])
local now, retention = plan.now, plan.retentionS
local claimed, deferred = {}, {}

-- Single fire: the order's first matching event for this subscription sets its fired key (SET
-- NX: one script runs at a time, so two routers, a retried notification or a late earlier
-- event cannot both fire); a later one finds it, renews its retention, and makes no delivery,
-- counted as `<sub>:single_fire_suppressed`. Returns whether the delivery may be created.
local function first_fire(d, e)
    local keep = tonumber(d.singleFireS) or 0
    if keep == 0 then
        return true
    end
    local fired = K.fired(d.sub, e.order)
    if redis.call('SET', fired, e.eventId, 'NX', 'EX', keep) then
        return true
    end
    redis.call('EXPIRE', fired, keep)
    redis.call('HINCRBY', K.stats, stat(d.sub, C.single_fire_suppressed), 1)
    return false
end

-- A new delivery's hash, with the entry's trace context if it has one.
local function made(key, d, e, event)
    delivery_create(key, d.id, d.sub, e.eventId, e.orderId, event, now)
    if e.trace then
        redis.call('HSET', key, D.tp, e.trace)
    end
end

-- Create one delivery; returns 'claimed' (in flight, claimed by this process), 'queued' (ready,
-- or in its order's line) or 'suppressed' (single fire: none made). Raises on a value it cannot
-- handle; route_failed then dead-letters it (single fire decided first: a suppressed delivery
-- is never dead-lettered, a first one that fails is, and its replay is the order's one fire).
local function create(d, e, event, key)
    if not first_fire(d, e) then
        return 'suppressed'
    end
    if d.error ~= nil and d.error ~= '' then
        error(d.error, 0)
    end
    made(key, d, e, event)
    local lease, grant = tonumber(d.lease) or 0, nil
    if lease > 0 then -- this process's worker has a slot for it: in flight if admitted
        grant = admission_lease(d.sub, now, 1, lease, tonumber(d.rate) or 0, false)
        lease = grant.count > 0 and lease or 0
    end
    local result = 'queued'
    if d.ordered ~= nil then -- in flight only if its order's line releases it at once
        result = ordering_enqueue(d.sub, d.id, key, e.order, d.ordered, now, lease)
    elseif lease > 0 then
        redis.call('ZADD', K.inflight(d.sub), lease, d.id)
        result = 'claimed'
    else
        redis.call('ZADD', K.ready(d.sub), now, d.id)
    end
    if grant then -- the token bucket pays only for a delivery that went in flight
        admission_spent(d.sub, grant, result == 'claimed' and 1 or 0)
    end
    return result
end

-- A delivery `create` failed on: dead-lettered at once with the error as its reason (visible in
-- /admin/dlq), unordered (a replay sends it without waiting for its order), and out of its
-- order's line, so that the order's other events go on.
local function route_failed(d, e, event, key, err)
    local reason = 'not routed: ' .. (type(err) == 'table' and tostring(err.err) or tostring(err))
    made(key, d, e, event)
    redis.call('HSET', key, D.lastError, reason, D.lastAttemptMs, now)
    redis.call('HDEL', key, D.ord, D.pos, D.win, D.stale)
    redis.call('ZREM', K.ready(d.sub), d.id)
    redis.call('ZREM', K.inflight(d.sub), d.id)
    delivery_dead(key, d.sub, d.id, now)
    if d.ordered ~= nil then
        ordering_unroute(d.sub, d.id, e.order, d.ordered, now)
    end
    redis.log(redis.LOG_WARNING, 'orderhook: delivery ' .. d.id .. ' dead-lettered: ' .. reason)
end

-- Whether a subscription is in the catalog, asked once a batch per subscription (a batch is
-- one script run: the catalog cannot change during it).
local in_catalog = {}
local function catalogued(sub)
    if in_catalog[sub] == nil then
        in_catalog[sub] = redis.call('HEXISTS', K.subscriptions, sub) == 1
    end
    return in_catalog[sub]
end

local function route(e, event)
    redis.call('SET', K.event(e.eventId), event, 'EX', retention)
    redis.call('SADD', K.order(e.orderId), e.eventId)
    redis.call('EXPIRE', K.order(e.orderId), retention)
    redis.call('ZADD', K.received, e.receivedMs, e.eventId)
    for _, d in ipairs(e.deliveries) do
        local key = K.delivery(d.id)
        if catalogued(d.sub) and redis.call('EXISTS', key) == 0 then
            local ok, result = pcall(create, d, e, event, key)
            if not ok then
                route_failed(d, e, event, key, result)
            elseif result == 'claimed' then
                claimed[#claimed + 1] = d.id
            end
        end
    end
end

redis.call('ZREMRANGEBYSCORE', K.received, '-inf', '(' .. (now - retention * 1000))
for i, e in ipairs(plan.entries) do
    local may, routed = ordering_turn(KEYS[1], e.entry, plan.windowS)
    if not may then
        deferred[#deferred + 1] = e.entry
    elseif redis.call('XACK', KEYS[1], plan.group, e.entry) == 1 then
        routed()
        route(e, ARGV[1 + i])
        redis.call('XDEL', KEYS[1], e.entry)
    end
end
return {claimed, deferred}
