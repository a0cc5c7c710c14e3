-- Evaluate every alert condition and record its transitions, in one atomic step: whichever
-- process runs it sees a condition start (or end) once, so exactly one notification is queued.
--
-- ARGV[1]  JSON: {now (ms), everyMs (the check interval), outboxMax, resolvedKept, shownIds
--          (dead letters' event ids a message names), errorChars (lastError's length in a
--          message), accounts: [VTEX account names], rules: [{target, events: {<event>: true},
--          backlogMs, silentMs, repeatMs}]}
--
-- Runs at most once per interval whatever the number of processes: a run less than
-- everyMs / 2 after the last one (alerts_marks' EVALUATED field) returns at once.
-- The subscriptions are the catalog's (every process agrees on them); each one's data is read
-- once (state hash, pending_age, dlq, stats), then held against each rule that wants the
-- event; each account's from accepted_at. A condition compared with its entry in
-- alerts_active (field `<target>|<event>|<subject>`, read once):
--   starts  -> HSET, XADD "firing"      lasts past repeatMs since last sent -> XADD "reminder"
--   ends    -> HDEL, LPUSH alerts_resolved (the latest resolvedKept), XADD "resolved"
-- Nothing is written while nothing changes. A subscription deleted from the catalog (or an
-- account no longer configured) resolves. subscription.dead_letter starts when the
-- dead-letter counter moved past the target's mark (alerts_marks: the counter when it was
-- last told) and the DLQ holds something; it lasts until the DLQ is empty; a reminder goes
-- only when it grew. One subject's bad data never stops the others: each is read under pcall.
-- Returns {notifications queued, subjects that failed, 1 if evaluated (0: too soon)}.
local a = cjson.decode(ARGV[1])
local now = a.now
local queued, failed = 0, 0
local SEP = '|'
local EVALUATED = '@evaluatedMs'
local DISABLED, BREAKER_OPEN = 'subscription.disabled', 'subscription.breaker_open'
local BACKLOG, DEAD = 'subscription.backlog', 'subscription.dead_letter'
local SILENT = 'ingest.silent'
local SUB_EVENTS = {[DISABLED] = true, [BREAKER_OPEN] = true, [BACKLOG] = true, [DEAD] = true}

local marks = {}  -- the dead-letter marks, and when the last run was
local raw_marks = redis.call('HGETALL', K.alerts_marks)
for i = 1, #raw_marks, 2 do marks[raw_marks[i]] = tonumber(raw_marks[i + 1]) end
local last = marks[EVALUATED]
if last and now >= last and now - last < a.everyMs / 2 then
    return {0, 0, 0}
end
redis.call('HSET', K.alerts_marks, EVALUATED, now)

local active = {}  -- field -> record (decoded), or false once unreadable
local raw = redis.call('HGETALL', K.alerts_active)
for i = 1, #raw, 2 do
    local ok, rec = pcall(cjson.decode, raw[i + 1])
    if ok and type(rec) == 'table' then
        active[raw[i]] = rec
    else
        redis.call('HDEL', K.alerts_active, raw[i])  -- unreadable: nothing to tell
    end
end

local function enqueue(rec, status)
    local note = {event = rec.event, status = status, subject = rec.subject, kind = rec.kind,
        since = rec.since, at = now, details = rec.details}
    redis.call('XADD', K.alerts_outbox, 'MAXLEN', '~', a.outboxMax, '*', A.target, rec.target,
        A.alert, cjson.encode(note))
    queued = queued + 1
end

local function resolve(field, rec)
    redis.call('HDEL', K.alerts_active, field)
    active[field] = nil
    rec.resolvedMs = now
    redis.call('LPUSH', K.alerts_resolved, cjson.encode(rec))
    redis.call('LTRIM', K.alerts_resolved, 0, a.resolvedKept - 1)
    enqueue(rec, 'resolved')
end

-- One condition of one target: `holds` now or not; `details()` makes what a message says (only
-- called when one goes); `remind` false holds a reminder back. Returns the status queued.
local function step(rule, event, subject, kind, holds, details, remind)
    local field = rule.target .. SEP .. event .. SEP .. subject
    local rec = active[field]
    local status = nil
    if holds and not rec then
        rec = {event = event, subject = subject, kind = kind, target = rule.target, since = now}
        status = 'firing'
    elseif holds and remind ~= false and now - rec.lastSentMs >= rule.repeatMs then
        status = 'reminder'
    elseif not holds and rec then
        resolve(field, rec)
        return 'resolved'
    end
    if status then
        rec.details, rec.lastSentMs = details(), now
        active[field] = rec
        redis.call('HSET', K.alerts_active, field, cjson.encode(rec))
        enqueue(rec, status)
    end
    return status
end

local function shorten(text)
    if not text then return nil end
    return string.sub(text, 1, a.errorChars)
end

local function number(value)
    return tonumber(value) or 0
end

-- A subscription's data, read once for every rule.
local function read_subscription(sub)
    local v = redis.call('HMGET', K.state(sub), S.state, S.reason, S.breaker, S.failures,
        S.lastError, S.failingSinceMs, S.changedMs, S.openUntil)
    local oldest = redis.call('ZRANGE', K.pending_age(sub), 0, 0, 'WITHSCORES')
    return {sub = sub, state = v[1], reason = v[2], breaker = v[3], failures = number(v[4]),
        lastError = shorten(v[5]), failingSinceMs = tonumber(v[6]), changedMs = tonumber(v[7]),
        openUntil = tonumber(v[8]), oldestMs = oldest[2] and number(oldest[2]),
        dead = number(redis.call('HGET', K.stats, stat(sub, C.dead))),
        dlq = redis.call('ZCARD', K.dlq(sub))}
end

local function disabled(rule, d)
    step(rule, DISABLED, d.sub, 'subscription', d.state == ENABLEMENT.disabled, function()
        return {reason = shorten(d.reason), lastError = d.lastError, changedMs = d.changedMs}
    end)
end

local function breaker_open(rule, d)
    local open = d.breaker == BREAKER.open or d.breaker == BREAKER.half_open
    step(rule, BREAKER_OPEN, d.sub, 'subscription', open, function()
        return {breaker = d.breaker, failures = d.failures, lastError = d.lastError,
            failingSinceMs = d.failingSinceMs, openUntilMs = d.openUntil}
    end)
end

local function backlog(rule, d)
    local late = d.oldestMs ~= nil and d.state ~= ENABLEMENT.paused  -- paused: held on purpose
        and now - d.oldestMs > rule.backlogMs
    step(rule, BACKLOG, d.sub, 'subscription', late, function()
        return {oldestAgeS = math.floor((now - d.oldestMs) / 1000),
            thresholdS = rule.backlogMs / 1000, queued = redis.call('ZCARD', K.pending_age(d.sub))}
    end)
end

local function dead_letter(rule, d)
    local mark_field = rule.target .. SEP .. d.sub
    local mark = marks[mark_field]
    if mark == nil or d.dead < mark then  -- first look, or the counters were reset
        redis.call('HSET', K.alerts_marks, mark_field, d.dead)
        mark, marks[mark_field] = d.dead, d.dead
    end
    local field = rule.target .. SEP .. DEAD .. SEP .. d.sub
    local holds = d.dlq > 0 and (active[field] ~= nil or d.dead > mark)
    local status = step(rule, DEAD, d.sub, 'subscription', holds, function()
        local ids = {}
        for _, delivery in ipairs(redis.call('ZREVRANGE', K.dlq(d.sub), 0, a.shownIds - 1)) do
            local event_id = redis.call('HGET', K.delivery(delivery), D.eventId)
            if event_id then ids[#ids + 1] = event_id end
        end
        return {newDeadLetters = d.dead - mark, deadLetters = d.dlq, eventIds = ids,
            lastError = d.lastError}
    end, d.dead > mark)
    if status == 'firing' or status == 'reminder' then
        redis.call('HSET', K.alerts_marks, mark_field, d.dead)
        marks[mark_field] = d.dead
    end
end

local CHECKS = {[DISABLED] = disabled, [BREAKER_OPEN] = breaker_open, [BACKLOG] = backlog,
    [DEAD] = dead_letter}

local function evaluate_subscription(sub)
    local d = read_subscription(sub)
    for _, rule in ipairs(a.rules) do
        for event, check in pairs(CHECKS) do
            if rule.events[event] then check(rule, d) end
        end
    end
end

local function evaluate_account(account)
    redis.call('HSETNX', K.accepted_at, account, now)  -- never seen: counted from now
    local at = number(redis.call('HGET', K.accepted_at, account))
    for _, rule in ipairs(a.rules) do
        if rule.events[SILENT] then
            step(rule, SILENT, account, 'account', now - at > rule.silentMs, function()
                return {lastAcceptedMs = at, silentS = math.floor((now - at) / 1000)}
            end)
        end
    end
end

local function guarded(f, subject)
    if not pcall(f, subject) then failed = failed + 1 end
end

local subs = redis.call('HKEYS', K.subscriptions)
for _, sub in ipairs(subs) do guarded(evaluate_subscription, sub) end
for _, account in ipairs(a.accounts) do guarded(evaluate_account, account) end

-- Conditions whose subject is gone (a deleted subscription, an account no longer configured),
-- or that their target no longer wants, resolve. One of a target this process does not know
-- is left alone: another process's config may have it.
local wants, known, configured = {}, {}, {}
for _, rule in ipairs(a.rules) do wants[rule.target] = rule.events end
for _, sub in ipairs(subs) do known[sub] = true end
for _, account in ipairs(a.accounts) do configured[account] = true end
for field, rec in pairs(active) do
    local events = wants[rec.target]
    if events then
        local gone = (SUB_EVENTS[rec.event] and not known[rec.subject])
            or (rec.event == SILENT and not configured[rec.subject])
        if gone or not events[rec.event] then resolve(field, rec) end
    end
end
return {queued, failed, 1}
