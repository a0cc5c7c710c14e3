-- A subscription's state (K.state(sub), fields S): every transition of it, defined once and
-- prepended to every script that changes it.
--   state, reason, changedMs     ENABLEMENT: enabled | disabled (by an operator, a 410, or
--                                failing for longer than disable_after) | paused (by an
--                                operator: deliveries queue, none goes until resumed)
--   breaker, failures, opens     BREAKER: closed | open | half-open; consecutive failures;
--                                opens in a row
--   openUntil, probeUntil        ms: the open breaker's cooldown; the half-open probe's lease
--   failingSinceMs               the first failure since the last success (disable_after counts
--                                from it)
--   lastError, lastErrorMs       the latest failure, for people
--   lastDeliveredMs              the latest success
--   tokens, tokensAtMs           the max_per_second token bucket (admission.lua)

-- Reset: the failures forgotten, the breaker closed, the failing time started afresh (an
-- operator's retry now, a success, an enable).
local function state_reset(sub)
    local state = K.state(sub)
    redis.call('HSET', state, S.breaker, BREAKER.closed, S.failures, 0, S.opens, 0)
    redis.call('HDEL', state, S.failingSinceMs, S.openUntil, S.probeUntil)
end

-- Enabled by an operator (enable, replay): reset as well, so the next single failure cannot
-- disable it again.
local function state_enable(sub, now)
    redis.call('HSET', K.state(sub), S.state, ENABLEMENT.enabled, S.reason, '', S.changedMs, now)
    state_reset(sub)
end

-- Enabled by a replay: as state_enable, but an operator's pause stays (a replay queues its
-- deliveries; they go when the subscription is resumed).
local function state_revive(sub, now)
    if redis.call('HGET', K.state(sub), S.state) ~= ENABLEMENT.paused then
        state_enable(sub, now)
    end
end

-- Disabled (an operator, a 410 Gone, failing too long): nothing is claimed until enabled.
local function state_disable(sub, reason, now)
    redis.call('HSET', K.state(sub), S.state, ENABLEMENT.disabled, S.reason, reason,
        S.changedMs, now)
end

-- Paused by an operator: nothing goes in flight (admission) until it is resumed (enabled);
-- deliveries keep queueing meanwhile.
local function state_pause(sub, reason, now)
    redis.call('HSET', K.state(sub), S.state, ENABLEMENT.paused, S.reason, reason, S.changedMs,
        now)
end

-- A delivery succeeded.
local function state_succeeded(sub, now)
    state_reset(sub)
    redis.call('HSET', K.state(sub), S.lastDeliveredMs, now)
end

-- An attempt failed with `err` (any outcome but delivered). `counts` (false for a 410, which
-- disables at once instead) makes it count towards the breaker, whose rule `b` is {threshold,
-- base cooldown ms, max cooldown ms, disable after ms}: `threshold` consecutive failures, or a
-- failed probe, open it for a cooldown that doubles from the base up to the max; failing
-- without a success for `disable after` disables the subscription.
local function state_failed(sub, err, now, counts, b)
    local state = K.state(sub)
    redis.call('HSET', state, S.lastError, err, S.lastErrorMs, now)
    if not counts then
        return
    end
    local failures = redis.call('HINCRBY', state, S.failures, 1)
    if redis.call('HSETNX', state, S.failingSinceMs, now) == 0 then
        local since = tonumber(redis.call('HGET', state, S.failingSinceMs))
        if now - since >= b[4] then
            state_disable(sub, 'failing for ' .. math.floor((now - since) / 1000) .. ' s: ' .. err,
                now)
        end
    end
    local breaker = redis.call('HGET', state, S.breaker)
    if breaker == BREAKER.half_open or (breaker ~= BREAKER.open and failures >= b[1]) then
        local opens = redis.call('HINCRBY', state, S.opens, 1)
        local cooldown = math.min(b[3], b[2] * 2 ^ (opens - 1))
        redis.call('HSET', state, S.breaker, BREAKER.open, S.openUntil, now + cooldown)
        redis.call('HINCRBY', K.stats, stat(sub, C.breaker_opened), 1)
    end
end
