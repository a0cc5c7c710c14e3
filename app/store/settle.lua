-- Record the outcomes of a batch of delivery attempts, and log each attempt.
--
-- ARGV[1]      JSON, the plan: {now (ms), retentionS (the delivery log's), outcomes: [{sub, id,
--              outcome, dueMs, status, error, eventId, latencyMs, bucket}]}
--              (app/store/deliveries.py): outcome is delivered | retry | dead | gone; status
--              and error are "" when none; bucket is app/store/latency.py's field for the
--              latency
-- ARGV[2]      JSON: per subscription of the batch, its breaker rule {threshold, base cooldown
--              ms, max cooldown ms, disable after ms} (state_failed, state.lua), as the
--              deliverer's copy of the catalog has it
-- ARGV[2 + i]  the i-th attempt's record JSON, for the delivery log (kept as is)
--
-- A delivery no longer in flight nor ready was taken over by another process (its lease had
-- expired): that process settles it, this one changes nothing. Returns 1 per outcome recorded,
-- 0 per outcome skipped. Logs are capped lists: 100 attempts an event, 200 in the recent list,
-- 1000 latencies a subscription; a delivery counts in the latency histogram (a hash of
-- bucket counts and `sumMs`) and that list unless it was replayed out of the dead-letter queue
-- (its time there is not the gateway's). A per-order delivery delivered or dead lets its
-- order's next one go (ordering_settled); a retried one holds its order back.
local plan = cjson.decode(ARGV[1])
local breakers = cjson.decode(ARGV[2])
local now, retention = plan.now, plan.retentionS
local DEFAULT_BREAKER = {10, 30000, 3600000, 432000000}
local results = {}

local function log_attempt(event_id, record)
    local log = K.event_log(event_id)
    redis.call('LPUSH', log, record)
    redis.call('LTRIM', log, 0, 99)
    redis.call('EXPIRE', log, retention)
    redis.call('LPUSH', K.recent_attempts, record)
    redis.call('LTRIM', K.recent_attempts, 0, 199)
end

local function delivered_in(sub, latency, bucket)
    redis.call('LPUSH', K.latencies(sub), now .. ':' .. latency)
    redis.call('LTRIM', K.latencies(sub), 0, 999)
    redis.call('HINCRBY', K.latency_histogram(sub), bucket, 1)
    redis.call('HINCRBY', K.latency_histogram(sub), H.sumMs, latency)
end

local function delivered(o, key)
    state_succeeded(o.sub, now)
    if redis.call('HGET', key, D.replayed) ~= '1' then
        delivered_in(o.sub, o.latencyMs, o.bucket)
    end
    ordering_settled(key, o.sub, o.id, o.eventId, true, now, retention)
    redis.call('DEL', key)
    redis.call('ZREM', K.pending_age(o.sub), o.id)
    redis.call('HINCRBY', K.stats, stat(o.sub, C.delivered), 1)
end

local function failed(o, key)
    redis.call('HINCRBY', key, D.attempts, 1)
    redis.call('HSET', key, D.lastStatus, o.status, D.lastError, o.error, D.lastAttemptMs, now)
    state_failed(o.sub, o.error, now, o.outcome ~= OUTCOME.gone, breakers[o.sub] or DEFAULT_BREAKER)
    if o.outcome == OUTCOME.retry then
        redis.call('ZADD', K.ready(o.sub), o.dueMs, o.id)
        redis.call('HINCRBY', K.stats, stat(o.sub, C.retried), 1)
    elseif o.outcome == OUTCOME.dead then
        delivery_dead(key, o.sub, o.id, now)
        -- the order's later events go on; the entry notes them
        ordering_settled(key, o.sub, o.id, o.eventId, false, now, retention)
    else -- gone: keep it queued, disable the subscription
        redis.call('ZADD', K.ready(o.sub), now, o.id)
        state_disable(o.sub, o.error, now)
    end
end

for i, o in ipairs(plan.outcomes) do
    if redis.call('ZREM', K.inflight(o.sub), o.id) == 0
        and redis.call('ZREM', K.ready(o.sub), o.id) == 0 then
        results[i] = 0
    else
        log_attempt(o.eventId, ARGV[2 + i])
        local key = K.delivery(o.id)
        if o.outcome == OUTCOME.delivered then
            delivered(o, key)
        else
            failed(o, key)
        end
        results[i] = 1
    end
end
return results
