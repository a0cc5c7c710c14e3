-- Claim due deliveries of one subscription: move them from ready to in flight under a lease.
--
-- ARGV[1]  JSON: {sub, now (ms), leaseUntil (ms), limit (at most this many), maxPerSecond}
--          maxPerSecond, 0 for none: a token bucket in the state hash (S.tokens,
--          S.tokensAtMs; capacity one second's worth), shared by every process
-- A disabled subscription claims nothing; orders whose reorder window is over release their
-- next delivery to the ready set first (ordering_release_due).
--
-- An open breaker claims nothing until `openUntil`; then it turns half-open and lets exactly
-- one delivery through as a probe (another one only if that probe's lease ran out): the due
-- delivery created first (the subscription's age set), so a retry of an early event rather
-- than the latest event's first attempt — a subscriber that fails first attempts and takes
-- retries is then found healthy, and drains.
-- Returns {items, next due}: items are {delivery id, event JSON, attempts so far}; next due is
-- the earliest due time still waiting (ms), or -1 when nothing waits (or disabled).
local args = cjson.decode(ARGV[1])
local sub, now = args.sub, args.now
local ready, inflight, statekey = K.ready(sub), K.inflight(sub), K.state(sub)
local state = redis.call('HMGET', statekey, S.state, S.breaker, S.openUntil, S.probeUntil)
if state[1] == ENABLEMENT.disabled then
    return {{}, -1}
end
local limit = args.limit
local held = ordering_release_due(sub, now)
local probing = false

-- The probe: the first-created due delivery among the oldest PROBE_SCAN undelivered ones, else
-- the first due.
local PROBE_SCAN = 100
local function probe()
    for _, id in ipairs(redis.call('ZRANGE', K.pending_age(sub), 0, PROBE_SCAN - 1)) do
        local due = redis.call('ZSCORE', ready, id)
        if due and tonumber(due) <= now then
            return {id}
        end
    end
    return redis.call('ZRANGEBYSCORE', ready, '-inf', now, 'LIMIT', 0, 1)
end
if state[2] == BREAKER.open or state[2] == BREAKER.half_open then
    if state[2] == BREAKER.open and now < tonumber(state[3]) then
        return {{}, tonumber(state[3])}
    end
    if state[2] == BREAKER.half_open and now < tonumber(state[4] or 0) then
        return {{}, tonumber(state[4])}
    end
    limit = 1
    probing = true
    redis.call('HSET', statekey, S.breaker, BREAKER.half_open, S.probeUntil, args.leaseUntil)
end
local rate = tonumber(args.maxPerSecond) or 0
local tokens = 0
if rate > 0 then
    local bucket = redis.call('HMGET', statekey, S.tokens, S.tokensAtMs)
    local capacity = math.max(1, rate)
    tokens = tonumber(bucket[1] or capacity)
    local since = now - tonumber(bucket[2] or now)
    tokens = math.min(capacity, tokens + since * rate / 1000)
    limit = math.min(limit, math.floor(tokens))
    if limit < 1 then
        redis.call('HSET', statekey, S.tokens, tostring(tokens), S.tokensAtMs, now)
        return {{}, now + math.ceil((1 - tokens) * 1000 / rate)}
    end
end
local items = {}
local ids
if probing then
    ids = probe()
else
    ids = redis.call('ZRANGEBYSCORE', ready, '-inf', now, 'LIMIT', 0, limit)
end
for _, id in ipairs(ids) do
    redis.call('ZREM', ready, id)
    local d = redis.call('HMGET', K.delivery(id), D.event, D.attempts)
    if d[1] then
        redis.call('ZADD', inflight, args.leaseUntil, id)
        items[#items + 1] = {id, d[1], d[2]}
    end
end
if rate > 0 then
    redis.call('HSET', statekey, S.tokens, tostring(tokens - #items), S.tokensAtMs, now)
end
local first = tonumber(redis.call('ZRANGE', ready, 0, 0, 'WITHSCORES')[2] or -1)
if held and (first < 0 or held < first) then
    first = held
end
return {items, first}
