-- wrk script for bench/ingest.py: POST one VTEX order notification per request.
--
--   wrk -t1 -c64 -d10s --latency -s bench/post.lua http://127.0.0.1:PORT/hooks/vtex -- TAG
--
-- Every request carries a unique OrderId, "v<TAG>t<thread>n<counter>-01": TAG is a random tag
-- chosen per wrk run (so runs against the same Redis never repeat an id), <thread> the wrk
-- thread number and <counter> a per-thread counter. Every response is counted by status, and a
-- 200 whose body does not say "accepted" (e.g. "duplicate") is counted apart. The summary is
-- printed at the end as "bench: ..." lines, parsed by bench/ingest.py, with the first
-- unexpected answer verbatim.

wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["X-Orderhook-Token"] = "bench-token"

local BODY = '{"Domain":"Fulfillment","OrderId":"v%st%dn%d-01","State":"ready-for-handling",'
    .. '"LastState":"window-to-cancel","LastChange":"2019-08-14T17:11:39.2550122Z",'
    .. '"CurrentChange":"2019-08-14T17:12:48.0965893Z",'
    .. '"Origin":{"Account":"mystore","Key":"vtexappkey-appvtex"}}'

local threads = {}

-- Runs in the main Lua state, once per thread, before that thread's init().
function setup(thread)
    table.insert(threads, thread)
    thread:set("thread_number", #threads)
end

-- Runs in each thread's own Lua state; the globals below are read back by done().
function init(args)
    tag = args[1] or string.format("%x", os.time())
    counter = 0
    statuses = {}
    not_accepted = 0
    first_unexpected = ""
end

function request()
    counter = counter + 1
    return wrk.format(nil, nil, nil, string.format(BODY, tag, thread_number, counter))
end

local function remember(status, body)
    if first_unexpected == "" then
        first_unexpected = tostring(status) .. " " .. string.sub(body or "", 1, 300)
    end
end

function response(status, headers, body)
    statuses[status] = (statuses[status] or 0) + 1
    if status ~= 200 then
        remember(status, body)
    elseif not string.find(body or "", '"status":"accepted"', 1, true) then
        not_accepted = not_accepted + 1
        remember(status, body)
    end
end

function done(summary, latency, requests)
    local totals = {}
    local rejected = 0
    local unexpected = ""
    for _, thread in ipairs(threads) do
        for status, count in pairs(thread:get("statuses")) do
            totals[status] = (totals[status] or 0) + count
        end
        rejected = rejected + thread:get("not_accepted")
        if unexpected == "" then
            unexpected = thread:get("first_unexpected")
        end
    end
    for status, count in pairs(totals) do
        io.write(string.format("bench: status %d %d\n", status, count))
    end
    io.write(string.format("bench: not-accepted %d\n", rejected))
    if unexpected ~= "" then
        io.write("bench: first-unexpected " .. string.gsub(unexpected, "[\r\n]", " ") .. "\n")
    end
end
