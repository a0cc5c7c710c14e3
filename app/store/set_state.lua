-- Enable or disable a subscription (an operator's action).
--
-- ARGV[1]  JSON: {sub, state: "enabled" | "disabled", reason (disabled), now (ms)}
-- Enabling forgets its failures (state_enable), so the next single failure cannot disable it.
local args = cjson.decode(ARGV[1])
if args.state == ENABLEMENT.enabled then
    state_enable(args.sub, args.now)
else
    state_disable(args.sub, args.reason, args.now)
end
return 1
