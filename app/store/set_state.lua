-- Enable, disable, pause or resume a subscription (an operator's action).
--
-- ARGV[1]  JSON: {sub, state: "enabled" | "disabled" | "paused", reason (disabled, paused),
--          now (ms),
--          keepPaused (enabling: leave a paused subscription paused: a replay enables a
--          disabled subscription, but does not end an operator's pause)}
-- Enabling (and resuming) forgets its failures (state_enable), so the next single failure
-- cannot disable it.
-- Returns the state it had before.
local args = cjson.decode(ARGV[1])
local before = redis.call('HGET', K.state(args.sub), S.state) or ENABLEMENT.enabled
if args.state == ENABLEMENT.enabled then
    if args.keepPaused then
        state_revive(args.sub, args.now)
    else
        state_enable(args.sub, args.now)
    end
elseif args.state == ENABLEMENT.paused then
    state_pause(args.sub, args.reason, args.now)
else
    state_disable(args.sub, args.reason, args.now)
end
return before
