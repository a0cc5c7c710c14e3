-- Delete one dead-lettered delivery.
--
-- ARGV[1]  the delivery id
-- Returns 1 if it was in its dead-letter queue and is now gone, else 0.
local key = K.delivery(ARGV[1])
local sub = redis.call('HGET', key, D.sub)
if sub and redis.call('ZREM', K.dlq(sub), ARGV[1]) == 1 then
    redis.call('DEL', key)
    return 1
end
return 0
