-- Delete a subscription: its catalog record (on the first run), then what it had queued, a
-- chunk a run, so that a subscription with a million deliveries does not hold Redis still.
--
-- ARGV[1]  JSON: {id, first (true on the first run), chunk (deliveries a run), auditKept}
-- ARGV[2]  the audit entry's JSON (first run)
-- The first run removes the record (the router makes no more of its deliveries: route.lua),
-- marks the id as being dropped (K.subscriptions_dropping, until app/store/catalog.py has
-- removed the rest), raises the revision and records the entry; it returns {-1, 0} if there
-- was no record. Each
-- run then removes up to `chunk` of its deliveries — undelivered (waiting, in flight, in an
-- order's line) or dead — with their hashes and their orders' per-order keys, and when none is
-- left, its state, latencies, counters and reorder holds. The keys no delivery leads to (single
-- fire's, drop_stale's) are app/store/catalog.py's to remove, by SCAN.
-- Returns {deliveries removed, 1 if there are more (run again) else 0}.
local args = cjson.decode(ARGV[1])
local sub = args.id
if args.first then
    if redis.call('HDEL', K.subscriptions, sub) == 0 then
        return {-1, 0}
    end
    redis.call('INCR', K.subscriptions_revision)
    redis.call('SADD', K.subscriptions_dropping, sub)
    redis.call('LPUSH', K.audit, ARGV[2])
    redis.call('LTRIM', K.audit, 0, args.auditKept - 1)
end

local sets = {K.pending_age(sub), K.dlq(sub), K.ready(sub), K.inflight(sub)}
local removed, left = 0, args.chunk
for _, set in ipairs(sets) do
    if left > 0 then
        for _, id in ipairs(redis.call('ZRANGE', set, 0, left - 1)) do
            local key = K.delivery(id)
            local order = redis.call('HGET', key, D.ord)
            if order then
                redis.call('DEL', K.order_waiting(sub, order), K.order_head(sub, order),
                    K.order_last(sub, order), K.order_dead(sub, order))
            end
            removed = removed + redis.call('DEL', key)
            for _, each in ipairs(sets) do
                redis.call('ZREM', each, id)
            end
            left = left - 1
        end
    end
end
if left > 0 then -- nothing more queued: the rest of what it had
    redis.call('DEL', K.state(sub), K.latencies(sub), K.latency_histogram(sub), K.order_hold(sub))
    for _, counter in pairs(C) do
        redis.call('HDEL', K.stats, stat(sub, counter))
    end
    return {removed, 0}
end
return {removed, 1}
