-- Dedupe and append a batch of events in one atomic step, and count them.
--
-- ARGV[1]      JSON: {windowS (the dedupe window), minute (Unix minutes, now), nowMs, events:
--              [{id, order, account, trace}]}: each event's id, order key (app/events.py's
--              order_key), its VTEX account if ingest.silent watches it, and optionally its
--              trace context (a W3C traceparent, app/tracing.py), kept as E.tp
-- ARGV[1 + i]  the i-th event's JSON (kept as is)
--
-- Each appended event of an order gets the order's next sequence number (E.seq, kept as long
-- as the dedupe window), so that routers in several processes can hand its events on in the
-- order they were appended (ordering_turn). This minute's count is kept two hours, for the
-- dashboard's chart; each watched account's last accepted time, for the ingest.silent alert.
-- Returns, per event, {1, stream entry id} when appended, or {0, stream entry id of the first
-- one} when the event was already seen within the window (also within this batch).
local args = cjson.decode(ARGV[1])
local window = args.windowS
local results = {}
local accepted = 0
local heard = {}
for i, e in ipairs(args.events) do
    local seen = K.seen(e.id)
    local first = redis.call('GET', seen)
    if first then
        results[#results + 1] = {0, first}
    else
        local sequence = K.order_sequence(e.order)
        local seq = redis.call('INCR', sequence)
        redis.call('EXPIRE', sequence, window)
        local fields = {E.id, e.id, E.event, ARGV[1 + i], E.seq, seq, E.ord, e.order}
        if e.trace then
            fields[#fields + 1], fields[#fields + 2] = E.tp, e.trace
        end
        local entry = redis.call('XADD', K.ingest_stream, '*', unpack(fields))
        redis.call('SET', seen, entry, 'EX', window)
        results[#results + 1] = {1, entry}
        accepted = accepted + 1
        if e.account then heard[e.account] = true end
    end
end
for account in pairs(heard) do
    redis.call('HSET', K.accepted_at, account, args.nowMs)
end
redis.call('HINCRBY', K.stats, C.accepted, accepted)
redis.call('HINCRBY', K.stats, C.duplicates, #results - accepted)
local minute = K.ingest_minute(args.minute)
redis.call('INCRBY', minute, accepted)
redis.call('EXPIRE', minute, 7200)
return results
