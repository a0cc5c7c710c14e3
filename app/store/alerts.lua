-- Evaluate every alert condition and record its transitions, in one atomic step: whichever
-- process runs it sees a condition start (or end) once, so exactly one notification is queued.
--
-- ARGV[1]  JSON: {now (ms), outboxMax, resolvedKept, shownIds (dead letters' event ids a message names),
--          errorChars (lastError's length in a message), accounts: [VTEX account names],
--          rules: [{target, events: {<event>: true}, backlogMs, silentMs, repeatMs}]}
--
-- The subscriptions are the catalog's (every process agrees on them); for each one and each
-- rule that wants the event, the condition is read from the subscription's own keys (state
-- hash, pending_age, dlq, stats); for each account, from accepted_at. A condition compared
-- with its entry in alerts_active (field `<target>|<event>|<subject>`):
--   starts  -> HSET, XADD "firing"      lasts past repeatMs since last sent -> XADD "reminder"
--   ends    -> HDEL, LPUSH alerts_resolved (the latest ALERTS_RESOLVED_KEPT), XADD "resolved"
-- A subscription deleted from the catalog (or an account no longer configured) resolves.
-- subscription.dead_letter starts when the dead-letter counter moved past the target's mark
-- (alerts_marks: the counter when it was last told) and the DLQ holds something; it lasts
-- until the DLQ is empty; a reminder goes only when it grew.
-- One subject's bad data never stops the others: each is evaluated under pcall.
-- Returns {notifications queued, subjects that failed}.
local a = cjson.decode(ARGV[1])
local now = a.now
local queued, failed = 0, 0
local SEP = '|'
local SUB_EVENTS = {'subscription.disabled', 'subscription.breaker_open', 'subscription.backlog',
    'subscription.dead_letter'}
local SILENT = 'ingest.silent'
local DEAD = 'subscription.dead_letter'

local function enqueue(rec, status)
    local note = {event = rec.event, status = status, subject = rec.subject, kind = rec.kind,
        since = rec.since, at = now, details = rec.details}
    redis.call('XADD', K.alerts_outbox, 'MAXLEN', '~', a.outboxMax, '*', A.target, rec.target,
        A.alert, cjson.encode(note))
    queued = queued + 1
end

local function resolve(field, rec)
    redis.call('HDEL', K.alerts_active, field)
    rec.resolvedMs = now
    redis.call('LPUSH', K.alerts_resolved, cjson.encode(rec))
    redis.call('LTRIM', K.alerts_resolved, 0, a.resolvedKept - 1)
    enqueue(rec, 'resolved')
end

-- One condition of one target: `details` when it holds now (else nil); `remind` false holds a
-- reminder back. Returns the status queued, or nil.
local function step(rule, event, subject, kind, details, remind)
    local field = rule.target .. SEP .. event .. SEP .. subject
    local raw = redis.call('HGET', K.alerts_active, field)
    local rec = raw and cjson.decode(raw)
    if details and not rec then
        rec = {event = event, subject = subject, kind = kind, target = rule.target, since = now,
            lastSentMs = now, details = details}
        redis.call('HSET', K.alerts_active, field, cjson.encode(rec))
        enqueue(rec, 'firing')
        return 'firing'
    elseif details then
        rec.details = details
        local status = nil
        if remind ~= false and now - rec.lastSentMs >= rule.repeatMs then
            rec.lastSentMs = now
            enqueue(rec, 'reminder')
            status = 'reminder'
        end
        redis.call('HSET', K.alerts_active, field, cjson.encode(rec))
        return status
    elseif rec then
        resolve(field, rec)
        return 'resolved'
    end
    return nil
end

local function shorten(text)
    if not text then return nil end
    return string.sub(text, 1, a.errorChars)
end

local function number(value)
    return tonumber(value) or 0
end

local function subscription_state(sub)
    local v = redis.call('HMGET', K.state(sub), S.state, S.reason, S.breaker, S.failures,
        S.lastError, S.failingSinceMs, S.changedMs, S.openUntil)
    return {state = v[1], reason = v[2], breaker = v[3], failures = number(v[4]),
        lastError = shorten(v[5]), failingSinceMs = tonumber(v[6]), changedMs = tonumber(v[7]),
        openUntil = tonumber(v[8])}
end

local function disabled(st)
    if st.state ~= ENABLEMENT.disabled then return nil end
    return {reason = shorten(st.reason), lastError = st.lastError, changedMs = st.changedMs}
end

local function breaker_open(st)
    if st.breaker ~= BREAKER.open and st.breaker ~= BREAKER.half_open then return nil end
    return {breaker = st.breaker, failures = st.failures, lastError = st.lastError,
        failingSinceMs = st.failingSinceMs, openUntilMs = st.openUntil}
end

local function backlog(sub, st, rule)
    if st.state == ENABLEMENT.paused then return nil end  -- the operator holds it back
    local oldest = redis.call('ZRANGE', K.pending_age(sub), 0, 0, 'WITHSCORES')
    if #oldest == 0 or now - number(oldest[2]) <= rule.backlogMs then return nil end
    return {oldestAgeS = math.floor((now - number(oldest[2])) / 1000),
        thresholdS = rule.backlogMs / 1000, queued = redis.call('ZCARD', K.pending_age(sub))}
end

local function dead_letter_details(sub, st, counter, mark)
    local ids = {}
    for _, delivery in ipairs(redis.call('ZREVRANGE', K.dlq(sub), 0, a.shownIds - 1)) do
        local event_id = redis.call('HGET', K.delivery(delivery), D.eventId)
        if event_id then ids[#ids + 1] = event_id end
    end
    return {newDeadLetters = counter - mark, deadLetters = redis.call('ZCARD', K.dlq(sub)),
        eventIds = ids, lastError = st.lastError}
end

local function dead_letter(rule, sub, st)
    local mark_field = rule.target .. SEP .. sub
    local counter = number(redis.call('HGET', K.stats, stat(sub, C.dead)))
    redis.call('HSETNX', K.alerts_marks, mark_field, counter)
    local mark = number(redis.call('HGET', K.alerts_marks, mark_field))
    local field = rule.target .. SEP .. DEAD .. SEP .. sub
    local active = redis.call('HEXISTS', K.alerts_active, field) == 1
    local waiting = redis.call('ZCARD', K.dlq(sub)) > 0
    local details = nil
    if waiting and (active or counter > mark) then
        details = dead_letter_details(sub, st, counter, mark)
    end
    local status = step(rule, DEAD, sub, 'subscription', details, counter > mark)
    if status == 'firing' or status == 'reminder' or counter < mark then
        redis.call('HSET', K.alerts_marks, mark_field, counter)
    end
end

local function evaluate_subscription(rule, sub)
    local st = subscription_state(sub)
    local e = rule.events
    if e['subscription.disabled'] then
        step(rule, 'subscription.disabled', sub, 'subscription', disabled(st))
    end
    if e['subscription.breaker_open'] then
        step(rule, 'subscription.breaker_open', sub, 'subscription', breaker_open(st))
    end
    if e['subscription.backlog'] then
        step(rule, 'subscription.backlog', sub, 'subscription', backlog(sub, st, rule))
    end
    if e[DEAD] then dead_letter(rule, sub, st) end
end

local function evaluate_account(rule, account)
    redis.call('HSETNX', K.accepted_at, account, now)  -- never seen: counted from now
    local last = number(redis.call('HGET', K.accepted_at, account))
    local details = nil
    if now - last > rule.silentMs then
        details = {lastAcceptedMs = last, silentS = math.floor((now - last) / 1000)}
    end
    step(rule, SILENT, account, 'account', details)
end

local function guarded(f, ...)
    local ok = pcall(f, ...)
    if not ok then failed = failed + 1 end
end

local subs = redis.call('HKEYS', K.subscriptions)
local known = {}
for _, sub in ipairs(subs) do known[sub] = true end
local accounts = {}
for _, account in ipairs(a.accounts) do accounts[account] = true end
local targets = {}
for _, rule in ipairs(a.rules) do
    targets[rule.target] = true
    for _, sub in ipairs(subs) do guarded(evaluate_subscription, rule, sub) end
    if rule.events[SILENT] then
        for _, account in ipairs(a.accounts) do guarded(evaluate_account, rule, account) end
    end
end

-- Conditions whose subject is gone: a deleted subscription, an account no longer configured.
-- (A target this process does not know is left alone: another process's config may have it.)
local is_sub_event = {}
for _, event in ipairs(SUB_EVENTS) do is_sub_event[event] = true end
local active = redis.call('HGETALL', K.alerts_active)
for i = 1, #active, 2 do
    local ok, rec = pcall(cjson.decode, active[i + 1])
    if not ok or type(rec) ~= 'table' then
        redis.call('HDEL', K.alerts_active, active[i])  -- unreadable: nothing to tell
    elseif targets[rec.target] then
        local gone_sub = is_sub_event[rec.event] and not known[rec.subject]
        local gone_account = rec.event == SILENT and not accounts[rec.subject]
        if gone_sub or gone_account then
            rec.details = {gone = true}
            resolve(active[i], rec)
        end
    end
end
return {queued, failed}
