-- Claim due deliveries of one subscription: move them from ready to in flight under a lease.
--
-- ARGV[1]  JSON: {sub, now (ms), leaseUntil (ms), limit (at most this many), maxPerSecond}
--          maxPerSecond, 0 for none: a token bucket in the state hash (S.tokens,
--          S.tokensAtMs; capacity one second's worth), shared by every process
-- A disabled subscription claims nothing; orders whose reorder window is over release their
-- next delivery to the ready set first (ordering_release_due).
--
-- What may go is admission's (admission.lua). A half-open breaker's probe is the due delivery
-- created first (the subscription's age set), so a retry of an early event rather than the
-- latest event's first attempt — a subscriber that fails first attempts and takes retries is
-- then found healthy, and drains.
-- Returns {items, next due}: items are {delivery id, event JSON, attempts so far, trace context
-- (D.tp: a W3C traceparent, or nil)}; next due is
-- the earliest due time still waiting (ms), or -1 when nothing waits (or disabled).
local args = cjson.decode(ARGV[1])
local sub, now = args.sub, args.now
local ready, inflight = K.ready(sub), K.inflight(sub)
local rate = tonumber(args.maxPerSecond) or 0
local grant = admission_lease(sub, now, args.limit, args.leaseUntil, rate, true)
if grant.disabled then
    return {{}, -1}
end
local held = ordering_release_due(sub, now)
if grant.count < 1 then
    return {{}, grant.wake}
end

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

local items = {}
local ids
if grant.probe then
    ids = probe()
else
    ids = redis.call('ZRANGEBYSCORE', ready, '-inf', now, 'LIMIT', 0, grant.count)
end
for _, id in ipairs(ids) do
    redis.call('ZREM', ready, id)
    local d = redis.call('HMGET', K.delivery(id), D.event, D.attempts, D.tp)
    if d[1] then
        redis.call('ZADD', inflight, args.leaseUntil, id)
        items[#items + 1] = {id, d[1], d[2], d[3]}
    end
end
admission_spent(sub, grant, #items)
local first = tonumber(redis.call('ZRANGE', ready, 0, 0, 'WITHSCORES')[2] or -1)
if held and (first < 0 or held < first) then
    first = held
end
return {items, first}
