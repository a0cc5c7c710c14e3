-- Admission: may deliveries of this subscription go in flight now? One rule for every path
-- that puts a delivery in flight — route.lua (a new delivery, to this process's worker) and
-- claim.lua (due ones) — prepended to the delivery scripts (one copy). Whether this process
-- has free slots is its own business (app/slots.py); this is the subscription's:
--   * a disabled or paused subscription admits nothing;
--   * an open circuit breaker admits nothing until its cooldown ends; then it turns half-open
--     and admits exactly one delivery, its probe (another only if that probe's lease ran out).
--     Only a caller that can pick the probe asks for one (`may_probe`: claim.lua takes the
--     first-created due delivery); a new delivery is admitted only while the breaker is closed;
--   * max_per_second (`rate`, 0 for none): a token bucket in the state hash (S.tokens,
--     S.tokensAtMs; capacity one second's worth), shared by every process.

-- Admit up to `wanted` deliveries of `sub` at `now`, in flight until `lease_until` (ms).
-- Returns a grant: {count (0..wanted), probe (the one admitted is the breaker's probe),
-- disabled, wake (when count is 0: when to ask again, ms; -1 for no time)}. The caller puts
-- `count` or fewer in flight, then calls admission_spent with how many it did.
local function admission_lease(sub, now, wanted, lease_until, rate, may_probe)
    local statekey = K.state(sub)
    local state = redis.call('HMGET', statekey, S.state, S.breaker, S.openUntil, S.probeUntil)
    if state[1] == ENABLEMENT.disabled or state[1] == ENABLEMENT.paused then
        return {count = 0, disabled = true, wake = -1}
    end
    local grant = {count = wanted, probe = false, now = now, wake = -1}
    if state[2] == BREAKER.open or state[2] == BREAKER.half_open then
        if not may_probe then
            return {count = 0, wake = -1}
        end
        if state[2] == BREAKER.open and now < tonumber(state[3]) then
            return {count = 0, wake = tonumber(state[3])}
        end
        if state[2] == BREAKER.half_open and now < tonumber(state[4] or 0) then
            return {count = 0, wake = tonumber(state[4])}
        end
        grant.count, grant.probe = 1, true
        redis.call('HSET', statekey, S.breaker, BREAKER.half_open, S.probeUntil, lease_until)
    end
    if rate > 0 then
        local bucket = redis.call('HMGET', statekey, S.tokens, S.tokensAtMs)
        local capacity = math.max(1, rate)
        local since = now - tonumber(bucket[2] or now)
        grant.tokens = math.min(capacity, tonumber(bucket[1] or capacity) + since * rate / 1000)
        grant.count = math.min(grant.count, math.floor(grant.tokens))
        if grant.count < 1 then
            redis.call('HSET', statekey, S.tokens, tostring(grant.tokens), S.tokensAtMs, now)
            return {count = 0, wake = now + math.ceil((1 - grant.tokens) * 1000 / rate)}
        end
    end
    return grant
end

-- `used` deliveries of a grant went in flight: the token bucket pays for them.
local function admission_spent(sub, grant, used)
    if grant.tokens then
        redis.call('HSET', K.state(sub), S.tokens, tostring(grant.tokens - used),
            S.tokensAtMs, grant.now)
    end
end
