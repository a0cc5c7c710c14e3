-- Claim due deliveries of one subscription: move them from ready to in flight under a lease.
--
-- KEYS[1]  the subscription's ready set (score: due time, ms)
-- KEYS[2]  its in-flight set (score: lease expiry, ms)
-- KEYS[3]  its state hash: state = "disabled" claims nothing; the circuit breaker
--          (`breaker` = closed | open | half-open, `openUntil` ms, `probeUntil` ms)
-- ARGV[1]  now, ms;  ARGV[2] lease expiry, ms;  ARGV[3] at most this many;  ARGV[4] the key tag
-- ARGV[5]  the subscription's max_per_second, 0 for none: a token bucket in the state hash
--          (`tokens`, `tokensAtMs`; capacity one second's worth), shared by every process
-- ARGV[6]  the subscription id: orders whose reorder window is over (base:hold) release their
--          next delivery to the ready set first (order.lua)
--
-- An open breaker claims nothing until `openUntil`; then it turns half-open and lets exactly
-- one delivery through as a probe (another one only if that probe's lease ran out): the due
-- delivery created first (the subscription's age set), so a retry of an early event rather
-- than the latest event's first attempt — a subscriber that fails first attempts and takes
-- retries is then found healthy, and drains.
-- Returns {items, next due}: items are {delivery id, event JSON, attempts so far}; next due is
-- the earliest due time still waiting (ms), or -1 when nothing waits (or disabled).
local now = tonumber(ARGV[1])
local state = redis.call('HMGET', KEYS[3], 'state', 'breaker', 'openUntil', 'probeUntil')
if state[1] == 'disabled' then
    return {{}, -1}
end
local limit = tonumber(ARGV[3])
local hold = ARGV[4] .. ':s:' .. ARGV[6] .. ':hold'
for _, ord in ipairs(redis.call('ZRANGEBYSCORE', hold, '-inf', now, 'LIMIT', 0, 1000)) do
    order_release(ARGV[4], ARGV[6], ord, now, '', 0)
end
local held = redis.call('ZRANGE', hold, 0, 0, 'WITHSCORES')[2]
local probing = false

-- The probe: the first-created due delivery among the oldest PROBE_SCAN undelivered ones, else
-- the first due.
local PROBE_SCAN = 100
local function probe()
    local age = ARGV[4] .. ':s:' .. ARGV[6] .. ':age'
    for _, id in ipairs(redis.call('ZRANGE', age, 0, PROBE_SCAN - 1)) do
        local due = redis.call('ZSCORE', KEYS[1], id)
        if due and tonumber(due) <= now then
            return {id}
        end
    end
    return redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, 1)
end
if state[2] == 'open' or state[2] == 'half-open' then
    if state[2] == 'open' and now < tonumber(state[3]) then
        return {{}, tonumber(state[3])}
    end
    if state[2] == 'half-open' and now < tonumber(state[4] or 0) then
        return {{}, tonumber(state[4])}
    end
    limit = 1
    probing = true
    redis.call('HSET', KEYS[3], 'breaker', 'half-open', 'probeUntil', ARGV[2])
end
local rate = tonumber(ARGV[5] or 0)
local tokens = 0
if rate > 0 then
    local bucket = redis.call('HMGET', KEYS[3], 'tokens', 'tokensAtMs')
    local capacity = math.max(1, rate)
    tokens = tonumber(bucket[1] or capacity)
    local since = now - tonumber(bucket[2] or now)
    tokens = math.min(capacity, tokens + since * rate / 1000)
    limit = math.min(limit, math.floor(tokens))
    if limit < 1 then
        redis.call('HSET', KEYS[3], 'tokens', tostring(tokens), 'tokensAtMs', now)
        return {{}, now + math.ceil((1 - tokens) * 1000 / rate)}
    end
end
local items = {}
local ids
if probing then
    ids = probe()
else
    ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, limit)
end
for _, id in ipairs(ids) do
    redis.call('ZREM', KEYS[1], id)
    local d = redis.call('HMGET', ARGV[4] .. ':d:' .. id, 'event', 'attempts')
    if d[1] then
        redis.call('ZADD', KEYS[2], ARGV[2], id)
        items[#items + 1] = {id, d[1], d[2]}
    end
end
if rate > 0 then
    redis.call('HSET', KEYS[3], 'tokens', tostring(tokens - #items), 'tokensAtMs', now)
end
local first = tonumber(redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')[2] or -1)
if held and (first < 0 or tonumber(held) < first) then
    first = tonumber(held)
end
return {items, first}
