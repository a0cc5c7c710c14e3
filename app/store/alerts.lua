-- Evaluate every alert condition and record its transitions, in one atomic step: whichever
-- process runs it sees a condition start (or end) once, so exactly one notification is queued.
--
-- ARGV[1]  JSON: {now (ms), everyMs (the check interval), config (a digest of the rules and
--          accounts: the process's config), configMark (its alerts_marks field's prefix,
--          ALERTS_CONFIG_MARK), outboxMax, resolvedKept, shownIds (dead letters'
--          event ids a message names), errorChars (lastError's length in a message), accounts:
--          [VTEX account names], rules: [{target, events: {<event>: true}, backlogMs, silentMs,
--          repeatMs}]}
--
-- Each config runs at most once per interval whatever the number of its processes: a run less
-- than everyMs / 2 after its last one (alerts_marks' `@config:<digest>` field, which also holds
-- what the config wants) returns at once. Two configs alive at once (a rolling deploy) each
-- run; the steps are idempotent, so a target both know is told once. A config is alive while
-- it ran within LIVE_INTERVALS of its interval; a dead one's field is removed.
-- The subscriptions are the catalog's (every process agrees on them); each one's data is read
-- once (state hash, pending_age, dlq, stats), then held against each rule that wants the
-- event; each account's from accepted_at. A condition compared with its entry in
-- alerts_active (field `<target>|<event>|<subject>`, read once; `config`: whose run raised it):
--   starts  -> HSET, XADD "firing"      lasts past repeatMs since last sent -> XADD "reminder"
--   ends    -> HDEL, LPUSH alerts_resolved (the latest resolvedKept), XADD "resolved"
-- A condition that does not hold for this config, raised by another live config, is that
-- one's to end (thresholds may differ); once its raiser is dead, a config that sees it hold
-- takes it over. Nothing is written while nothing changes. A subscription deleted from the
-- catalog resolves at once (and its dead-letter marks go); a condition no live config wants
-- (its target or event, or its account, gone from every config) resolves. An entry that is not
-- a whole record is dropped. subscription.dead_letter starts when the dead-letter counter
-- moved past the target's mark (alerts_marks: the counter when it was last told) and the DLQ
-- holds something; it lasts until the DLQ is empty; a reminder goes only when it grew. One
-- subject's bad data never stops the others: each is read under pcall.
-- Returns {notifications queued, subjects that failed, 1 if evaluated (0: too soon),
-- outbox entries trimmed by its cap (lost before anyone read them)}.
local a = cjson.decode(ARGV[1])
local now = a.now
local queued, failed = 0, 0
local SEP = '|'
local CONFIG = a.configMark
local LIVE_INTERVALS = 3
local DISABLED, BREAKER_OPEN = 'subscription.disabled', 'subscription.breaker_open'
local BACKLOG, DEAD = 'subscription.backlog', 'subscription.dead_letter'
local SILENT = 'ingest.silent'
local SUB_EVENTS = {[DISABLED] = true, [BREAKER_OPEN] = true, [BACKLOG] = true, [DEAD] = true}

local function is_config(c)
    return type(c) == 'table' and type(c.at) == 'number' and type(c.everyMs) == 'number'
        and type(c.wants) == 'table' and type(c.accounts) == 'table'
end

local marks, configs = {}, {}  -- the dead-letter marks; the configs' runs, by digest
local raw_marks = redis.call('HGETALL', K.alerts_marks)
for i = 1, #raw_marks, 2 do
    local field, value = raw_marks[i], raw_marks[i + 1]
    local ok, c = pcall(cjson.decode, value)
    if string.sub(field, 1, 1) ~= '@' then
        marks[field] = tonumber(value)
    elseif string.sub(field, 1, #CONFIG) == CONFIG and ok and is_config(c) then
        configs[string.sub(field, #CONFIG + 1)] = c
    else
        redis.call('HDEL', K.alerts_marks, field)  -- unreadable, or the old global gate
    end
end
local mine = configs[a.config]
if mine and now >= mine.at and now - mine.at < a.everyMs / 2 then
    return {0, 0, 0, 0}
end
local wants, configured = {}, {}
for _, rule in ipairs(a.rules) do wants[rule.target] = rule.events end
for _, account in ipairs(a.accounts) do configured[account] = true end
configs[a.config] = {at = now, everyMs = a.everyMs, wants = wants, accounts = configured}
redis.call('HSET', K.alerts_marks, CONFIG .. a.config, cjson.encode(configs[a.config]))
local live = {}  -- digest -> config, of the configs that ran lately
for digest, c in pairs(configs) do
    if digest == a.config or now - c.at <= LIVE_INTERVALS * c.everyMs then
        live[digest] = c
    else
        redis.call('HDEL', K.alerts_marks, CONFIG .. digest)
    end
end
local outbox_before = redis.call('XLEN', K.alerts_outbox)

local function readable(rec)
    return type(rec) == 'table' and type(rec.lastSentMs) == 'number'
        and type(rec.since) == 'number' and type(rec.target) == 'string'
        and type(rec.event) == 'string' and type(rec.subject) == 'string'
end

local active = {}  -- field -> record (decoded)
local raw = redis.call('HGETALL', K.alerts_active)
for i = 1, #raw, 2 do
    local ok, rec = pcall(cjson.decode, raw[i + 1])
    if ok and readable(rec) then
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
-- Whether this config decides the record's end: it raised it, or its raiser is dead.
local function owns(rec)
    return rec.config == a.config or not live[rec.config]
end

-- One condition of one target: `holds` now or not; `details()` makes what a message says (only
-- called when one goes); `remind` false holds a reminder back. Returns the status queued.
local function step(rule, event, subject, kind, holds, details, remind)
    local field = rule.target .. SEP .. event .. SEP .. subject
    local rec = active[field]
    local status = nil
    if holds and not rec then
        rec = {event = event, subject = subject, kind = kind, target = rule.target, since = now,
            config = a.config}
        status = 'firing'
    elseif holds and remind ~= false and now - rec.lastSentMs >= rule.repeatMs then
        status = 'reminder'
    elseif rec and not owns(rec) then
        return nil  -- another live config raised it: its end is that one's to see
    elseif not holds and rec then
        resolve(field, rec)
        return 'resolved'
    elseif holds and rec.config ~= a.config then
        rec.config = a.config  -- its raiser is gone: this config takes it over
        redis.call('HSET', K.alerts_active, field, cjson.encode(rec))
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

-- Whether a live config wants the condition: its target wants the event (and, for an
-- account, lists the account).
local function wanted(rec)
    for _, c in pairs(live) do
        local events = c.wants[rec.target]
        if type(events) == 'table' and events[rec.event]
            and (rec.event ~= SILENT or c.accounts[rec.subject]) then
            return true
        end
    end
    return false
end

-- Conditions whose subscription was deleted, or that no live config wants, resolve; the
-- dead-letter marks of deleted subscriptions go.
local known = {}
for _, sub in ipairs(subs) do known[sub] = true end
local function settle(field)
    local rec = active[field]
    if (SUB_EVENTS[rec.event] and not known[rec.subject]) or not wanted(rec) then
        resolve(field, rec)
    end
end
for field in pairs(active) do guarded(settle, field) end
for field in pairs(marks) do
    local sub = string.match(field, '^[^|]*|(.*)$')
    if sub and not known[sub] then redis.call('HDEL', K.alerts_marks, field) end
end
local trimmed = outbox_before + queued - redis.call('XLEN', K.alerts_outbox)
return {queued, failed, 1, trimmed}
