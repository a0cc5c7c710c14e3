-- A subscription's state hash, base:state with base = tag .. ':s:' .. sub; these rules are
-- prepended to every script that changes it (one copy):
--   state, reason, changedMs     enabled | disabled (by an operator, a 410, or failing too long)
--   breaker, failures, opens     closed | open | half-open; consecutive failures; opens in a row
--   openUntil, probeUntil        ms: the open breaker's cooldown; the half-open probe's lease
--   failingSinceMs               the first failure since the last success (disable_after counts
--                                from it)
--   lastError, lastErrorMs       the latest failure, for people
--   lastDeliveredMs              the latest success (settle.lua)
--   tokens, tokensAtMs           the max_per_second token bucket (claim.lua)

-- Forget the failures: the breaker closes and the failing time starts afresh.
local function state_reset_breaker(state)
    redis.call('HSET', state, 'breaker', 'closed', 'failures', 0, 'opens', 0)
    redis.call('HDEL', state, 'failingSinceMs', 'openUntil', 'probeUntil')
end

-- An operator's "go" (replay, enable): enabled, with its failures forgotten.
local function state_enable(state, now)
    redis.call('HSET', state, 'state', 'enabled', 'reason', '', 'changedMs', now)
    state_reset_breaker(state)
end
