-- Write a subscription's catalog record, if the stored version is the one the change was made
-- from (two processes changing it at once: the second is told, and tries again or says 409).
--
-- ARGV[1]  JSON: {id, expect (the stored version the change is made from; 0: the id must be
--          free), version (the new record's), auditKept (audit entries kept)}
-- ARGV[2]  the record's JSON (app/store/catalog.py's Record)
-- ARGV[3]  the audit entry's JSON, or "" for none
-- Raises the catalog's revision (every process's copy notices it) and records the entry.
-- Returns {1, revision} when written; {0, the stored version (0: none)} when it is not
-- `expect`; {0, -1} for a new one whose id is still being dropped (K.subscriptions_dropping:
-- what the deleted one had queued must be gone before a new one of its id gets anything).
local args = cjson.decode(ARGV[1])
if args.expect == 0 and redis.call('SISMEMBER', K.subscriptions_dropping, args.id) == 1 then
    return {0, -1} -- a deleted subscription of this id is still being removed
end
local stored = redis.call('HGET', K.subscriptions, args.id)
local version = stored and tonumber(cjson.decode(stored).version) or 0
if version ~= args.expect then
    return {0, version}
end
redis.call('HSET', K.subscriptions, args.id, ARGV[2])
local revision = redis.call('INCR', K.subscriptions_revision)
if ARGV[3] ~= '' then
    redis.call('LPUSH', K.audit, ARGV[3])
    redis.call('LTRIM', K.audit, 0, args.auditKept - 1)
end
return {1, revision}
