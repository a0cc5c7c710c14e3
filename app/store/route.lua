-- Route a batch of ingest entries: create each entry's deliveries and acknowledge it, atomically.
--
-- KEYS[1]  the ingest stream
-- ARGV[1]  the router's consumer group
-- ARGV[2]  now, in milliseconds
-- ARGV[3]  the key tag, e.g. "{orderhook}": every key of this prefix starts with it
-- ARGV[5]  the delivery log's retention, in seconds
-- ARGV[4]  JSON: [[entry id, [[delivery id, subscription, event id, order id, event JSON,
--          lease expiry ms, ordered], ...], event id, order id, event JSON], ...]; a lease
--          expiry of 0 queues the delivery as ready, any other puts it straight in flight,
--          claimed by this process's own worker (unless the subscription is disabled or its
--          breaker is not closed: then it waits in the ready set). `ordered` is 0, or for a
--          per-order subscription [order key, position, reorder window ms, drop stale 0|1]:
--          the delivery waits its turn in its order (order.lua), in flight only if released
--          at once
--
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
                redis.call('HSET', key, 'id', d[1], 'sub', d[2], 'eventId', d[3], 'orderId', d[4],
                    'event', d[5], 'attempts', 0, 'createdMs', now)
                redis.call('ZADD', tag .. ':s:' .. d[2] .. ':age', now, d[1])
                local state = redis.call('HMGET', tag .. ':s:' .. d[2] .. ':state', 'state', 'breaker')
                local lease = 0
                if d[6] > 0 and state[1] ~= 'disabled' and (not state[2] or state[2] == 'closed') then
                    lease = d[6]
                end
                if d[7] ~= 0 then
                    local ord, pos = d[7][1], d[7][2]
                    redis.call('HSET', key, 'ord', ord, 'pos', pos, 'win', d[7][3], 'stale', d[7][4])
                    redis.call('ZADD', tag .. ':s:' .. d[2] .. ':o:' .. ord, 0, pos)
                    if order_release(tag, d[2], ord, tonumber(now), d[1], lease) then
                        claimed[#claimed + 1] = d[1]
                    end
                elseif lease > 0 then
                    redis.call('ZADD', tag .. ':s:' .. d[2] .. ':inflight', lease, d[1])
                    claimed[#claimed + 1] = d[1]
                else
                    redis.call('ZADD', tag .. ':s:' .. d[2] .. ':ready', now, d[1])
                end
            end
        end
        redis.call('XDEL', KEYS[1], entry[1])
    end
end
return {claimed, deferred}
