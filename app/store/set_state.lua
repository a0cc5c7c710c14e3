-- Enable or disable a subscription (an operator's action).
--
-- KEYS[1]  the subscription's state hash
-- ARGV[1]  "enabled" | "disabled";  ARGV[2] the reason (disabled);  ARGV[3] now, ms
-- Enabling forgets its failures (state_enable), so the next single failure cannot disable it.
if ARGV[1] == 'enabled' then
    state_enable(KEYS[1], ARGV[3])
else
    redis.call('HSET', KEYS[1], 'state', 'disabled', 'reason', ARGV[2], 'changedMs', ARGV[3])
end
return 1
