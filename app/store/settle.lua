-- Record the outcomes of a batch of delivery attempts, and log each attempt.
--
-- KEYS[1]  the stats hash
-- ARGV[1]  the key tag (every key below is built from it: one hash slot)
-- ARGV[2]  now, ms
-- ARGV[3]  JSON: [[subscription, delivery id, outcome, due ms, status, error, event id,
--          attempt record JSON, latency ms, latency bucket field], ...]
--          outcome: delivered | retry | dead | gone; status and error are "" when none;
--          the bucket field is app/store/latency.py's for this latency
-- ARGV[4]  the delivery log's retention, in seconds
-- ARGV[5]  JSON: per subscription, its breaker {threshold, base cooldown ms, max cooldown ms,
--          disable after ms}
--
-- The circuit breaker: a success closes it (and clears the failure count); `threshold`
-- consecutive failures, or a failed probe, open it for a cooldown that doubles from the base
-- up to the max; failing without a success for `disable after` disables the subscription.
-- A delivery no longer in flight nor ready was taken over by another process (its lease had
-- expired): that process settles it, this one changes nothing. Returns 1 per outcome recorded,
-- 0 per outcome skipped. Logs are capped lists: 100 attempts an event, 200 in the recent list,
-- 1000 latencies a subscription; a delivery counts in the latency histogram (a hash of
-- bucket counts and `sumMs`) and that list unless it was replayed out of the dead-letter queue
-- (its time there is not the gateway's). A delivery sets `lastDeliveredMs` in the subscription's
-- state, next to `lastErrorMs`. A per-order delivery delivered or dead lets its order's next
-- one go (order.lua); a retried one holds its order back.
local tag, now, retention = ARGV[1], tonumber(ARGV[2]), ARGV[4]
local breakers = cjson.decode(ARGV[5])
local results = {}

local function failed(state, sub, err)
    local b = breakers[sub] or {10, 30000, 3600000, 432000000}
    local failures = redis.call('HINCRBY', state, 'failures', 1)
    if redis.call('HSETNX', state, 'failingSinceMs', now) == 0 then
        local since = tonumber(redis.call('HGET', state, 'failingSinceMs'))
        if now - since >= b[4] then
            redis.call('HSET', state, 'state', 'disabled', 'changedMs', now,
                'reason', 'failing for ' .. math.floor((now - since) / 1000) .. ' s: ' .. err)
        end
    end
    local breaker = redis.call('HGET', state, 'breaker')
    if breaker == 'half-open' or (breaker ~= 'open' and failures >= b[1]) then
        local opens = redis.call('HINCRBY', state, 'opens', 1)
        local cooldown = math.min(b[3], b[2] * 2 ^ (opens - 1))
        redis.call('HSET', state, 'breaker', 'open', 'openUntil', now + cooldown)
        redis.call('HINCRBY', KEYS[1], sub .. ':breaker_opened', 1)
    end
end
local function delivered_in(base, latency, bucket)
    redis.call('LPUSH', base .. ':lat', now .. ':' .. latency)
    redis.call('LTRIM', base .. ':lat', 0, 999)
    redis.call('HINCRBY', base .. ':lath', bucket, 1)
    redis.call('HINCRBY', base .. ':lath', 'sumMs', latency)
end
for i, o in ipairs(cjson.decode(ARGV[3])) do
    local sub, id, outcome, due, status, err = o[1], o[2], o[3], o[4], o[5], o[6]
    local base = tag .. ':s:' .. sub
    local key = tag .. ':d:' .. id
    if redis.call('ZREM', base .. ':inflight', id) == 0 and redis.call('ZREM', base .. ':ready', id) == 0 then
        results[i] = 0
    else
        local log = tag .. ':log:' .. o[7]
        redis.call('LPUSH', log, o[8])
        redis.call('LTRIM', log, 0, 99)
        redis.call('EXPIRE', log, retention)
        redis.call('LPUSH', tag .. ':attempts', o[8])
        redis.call('LTRIM', tag .. ':attempts', 0, 199)
        local ordered = redis.call('HMGET', key, 'ord', 'pos', 'replayed')
        if outcome == 'delivered' then
            state_reset_breaker(base .. ':state')
            redis.call('HSET', base .. ':state', 'lastDeliveredMs', now)
            redis.call('DEL', key)
            redis.call('ZREM', base .. ':age', id)
            if not ordered[3] then
                delivered_in(base, o[9], o[10])
            end
            redis.call('HINCRBY', KEYS[1], sub .. ':delivered', 1)
            if ordered[1] then
                order_settled(tag, sub, id, o[7], ordered[1], ordered[2], true, now, retention)
            end
        else
            redis.call('HINCRBY', key, 'attempts', 1)
            redis.call('HSET', key, 'lastStatus', status, 'lastError', err, 'lastAttemptMs', now)
            redis.call('HSET', base .. ':state', 'lastError', err, 'lastErrorMs', now)
            if outcome ~= 'gone' then
                failed(base .. ':state', sub, err)
            end
            if outcome == 'retry' then
                redis.call('ZADD', base .. ':ready', due, id)
                redis.call('HINCRBY', KEYS[1], sub .. ':retried', 1)
            elseif outcome == 'dead' then
                redis.call('HSET', key, 'deadMs', now)
                redis.call('ZADD', base .. ':dlq', now, id)
                redis.call('ZREM', base .. ':age', id)
                redis.call('HINCRBY', KEYS[1], sub .. ':dead', 1)
                if ordered[1] then -- the order's later events go on; the entry notes them
                    order_settled(tag, sub, id, o[7], ordered[1], ordered[2], false, now, retention)
                end
            else -- gone: keep it queued, disable the subscription
                redis.call('ZADD', base .. ':ready', now, id)
                redis.call('HSET', base .. ':state', 'state', 'disabled', 'reason', err, 'changedMs', now)
            end
        end
        results[i] = 1
    end
end
return results
