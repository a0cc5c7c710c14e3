-- Admission: may a delivery of this subscription go in flight now? One rule for every path
-- that puts a delivery in flight (route.lua's claim at creation, claim.lua's claim of due
-- ones); prepended to the delivery scripts (one copy).

-- route.lua: a delivery created with a lease (this process's worker has a free slot) goes in
-- flight at once only while the subscription is enabled and its breaker closed; returns the
-- lease (ms), or 0 when it must wait in the ready set.
local function admission_route_lease(sub, lease)
    if lease <= 0 then
        return 0
    end
    local state = redis.call('HMGET', K.state(sub), S.state, S.breaker)
    if state[1] ~= ENABLEMENT.disabled and (not state[2] or state[2] == BREAKER.closed) then
        return lease
    end
    return 0
end
