-- Dedupe and append a batch of events in one atomic step, and count them.
--
-- KEYS[1]      the ingest stream
-- KEYS[2]      the stats hash (`accepted`, `duplicates`)
-- KEYS[3]      this minute's ingest counter (kept two hours, for the dashboard's chart)
-- KEYS[3 + i]  the seen key of the i-th event
-- ARGV[1]      the dedupe window in seconds
-- ARGV[2]      the key tag
-- ARGV[3i]     the i-th event id
-- ARGV[3i + 1] the i-th event as JSON
-- ARGV[3i + 2] the i-th event's order key ("<account>:<order id>"): each appended event of an
--              order gets the order's next sequence number (`seq`, kept as long as the dedupe
--              window), so that routers in several processes can hand its events on in the
--              order they were appended
--
-- Returns, per event, {1, stream entry id} when appended, or {0, stream entry id of the first
-- one} when the event was already seen within the window (also within this batch).
local window, tag = ARGV[1], ARGV[2]
local results = {}
local accepted = 0
for i = 4, #KEYS do
    local seen = KEYS[i]
    local first = redis.call('GET', seen)
    if first then
        results[#results + 1] = {0, first}
    else
        local n = i - 3
        local id, event, ord = ARGV[3 * n], ARGV[3 * n + 1], ARGV[3 * n + 2]
        local sequence = tag .. ':oseq:' .. ord
        local seq = redis.call('INCR', sequence)
        redis.call('EXPIRE', sequence, window)
        local entry = redis.call('XADD', KEYS[1], '*', 'id', id, 'event', event, 'seq', seq, 'ord', ord)
        redis.call('SET', seen, entry, 'EX', window)
        results[#results + 1] = {1, entry}
        accepted = accepted + 1
    end
end
redis.call('HINCRBY', KEYS[2], 'accepted', accepted)
redis.call('HINCRBY', KEYS[2], 'duplicates', #results - accepted)
redis.call('INCRBY', KEYS[3], accepted)
redis.call('EXPIRE', KEYS[3], 7200)
return results
