-- Commit pull-subscription items by their handles: they are gone for good.
--
-- KEYS[1]  the subscription's hidden set;  KEYS[2] the stats hash
-- ARGV[1]  the key tag;  ARGV[2] the subscription id;  ARGV[3..] handles as "<id>~<hidden until>"
--
-- A handle whose item came back (its visibility timeout passed) or was already committed
-- commits nothing. Returns the number committed.
local tag, sub = ARGV[1], ARGV[2]
local count = 0
for i = 3, #ARGV do
    local id, hidden_until = string.match(ARGV[i], '^(.+)~(%d+)$')
    if id and redis.call('ZSCORE', KEYS[1], id) == hidden_until then
        redis.call('ZREM', KEYS[1], id)
        redis.call('DEL', tag .. ':d:' .. id)
        redis.call('ZREM', tag .. ':s:' .. sub .. ':age', id)
        redis.call('HINCRBY', KEYS[2], sub .. ':delivered', 1)
        count = count + 1
    end
end
return count
