-- Route a batch of ingest entries: create each entry's deliveries and acknowledge it, atomically.
--
-- KEYS[1]  the ingest stream
-- ARGV[1]  the router's consumer group
-- ARGV[2]  now, in milliseconds
-- ARGV[3]  the key tag, e.g. "{orderhook}": every key of this prefix starts with it
-- ARGV[5]  the delivery log's retention, in seconds
-- ARGV[4]  JSON: [[entry id, [[delivery id, subscription, event id, order id, event JSON,
--          lease expiry ms], ...], event id, order id, event JSON], ...]; a lease expiry of 0 queues the delivery as ready,
--          any other puts it straight in flight, claimed by this process's own worker
--          (unless the subscription is disabled or its breaker is not closed: then it waits in
--          the ready set)
--
-- Each routed event is kept (ev:<id>) and indexed by order id for the retention, for the
-- delivery log; each new delivery joins its subscription's age set (oldest undelivered).
-- An entry already acknowledged (by another router that reclaimed it) creates nothing.
-- Delivery keys are built from the tag: they share its hash slot with KEYS[1].
-- Returns the ids of the deliveries created in flight (claimed).
local group, now, tag, retention = ARGV[1], ARGV[2], ARGV[3], ARGV[5]
local claimed = {}
for _, entry in ipairs(cjson.decode(ARGV[4])) do
    if redis.call('XACK', KEYS[1], group, entry[1]) == 1 then
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
                if d[6] > 0 and state[1] ~= 'disabled' and (not state[2] or state[2] == 'closed') then
                    redis.call('ZADD', tag .. ':s:' .. d[2] .. ':inflight', d[6], d[1])
                    claimed[#claimed + 1] = d[1]
                else
                    redis.call('ZADD', tag .. ':s:' .. d[2] .. ':ready', now, d[1])
                end
            end
        end
        redis.call('XDEL', KEYS[1], entry[1])
    end
end
return claimed
