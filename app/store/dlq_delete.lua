-- Delete one dead-lettered delivery.
--
-- ARGV[1] the key tag;  ARGV[2] the delivery id
-- Returns 1 if it was in its dead-letter queue and is now gone, else 0.
local key = ARGV[1] .. ':d:' .. ARGV[2]
local sub = redis.call('HGET', key, 'sub')
if sub and redis.call('ZREM', ARGV[1] .. ':s:' .. sub .. ':dlq', ARGV[2]) == 1 then
    redis.call('DEL', key)
    return 1
end
return 0
