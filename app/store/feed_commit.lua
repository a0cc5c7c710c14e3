-- Commit pull-subscription items by their handles: they are gone for good.
--
-- ARGV[1]  the subscription id;  ARGV[2..] handles as "<id>~<hidden until>"
--
-- A handle whose item came back (its visibility timeout passed) or was already committed
-- commits nothing. Returns the number committed.
local sub = ARGV[1]
local hidden = K.inflight(sub)
local count = 0
for i = 2, #ARGV do
    local id, hidden_until = string.match(ARGV[i], '^(.+)~(%d+)$')
    if id and redis.call('ZSCORE', hidden, id) == hidden_until then
        redis.call('ZREM', hidden, id)
        redis.call('DEL', K.delivery(id))
        redis.call('ZREM', K.pending_age(sub), id)
        redis.call('HINCRBY', K.stats, stat(sub, C.delivered), 1)
        count = count + 1
    end
end
return count
