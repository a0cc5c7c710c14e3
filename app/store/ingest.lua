-- Dedupe and append a batch of events in one atomic step.
--
-- KEYS[1]      the ingest stream
-- KEYS[1 + i]  the seen key of the i-th event
-- ARGV[1]      the dedupe window in seconds
-- ARGV[2i]     the i-th event id
-- ARGV[2i + 1] the i-th event as JSON
--
-- Returns, per event, {1, stream entry id} when appended, or {0, stream entry id of the first
-- one} when the event was already seen within the window (also within this batch).
local window = ARGV[1]
local results = {}
for i = 2, #KEYS do
    local seen = KEYS[i]
    local first = redis.call('GET', seen)
    if first then
        results[#results + 1] = {0, first}
    else
        local entry = redis.call('XADD', KEYS[1], '*', 'id', ARGV[2 * (i - 1)], 'event', ARGV[2 * (i - 1) + 1])
        redis.call('SET', seen, entry, 'EX', window)
        results[#results + 1] = {1, entry}
    end
end
return results
