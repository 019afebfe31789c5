-- wrk script: replays pre-signed Standard Webhooks requests, one file per wrk thread, and counts
-- answers by status. Usage: wrk -t2 -c64 -d20s -s wrk_signed.lua URL -- /path/prefix
-- Each line of <prefix>.<thread>: webhook-id TAB timestamp TAB signature TAB body
local threads = {}

function setup(thread)
  thread:set("id", #threads + 1)
  table.insert(threads, thread)
end

function init(args)
  requests, i, n202, n200, nother = {}, 0, 0, 0, 0
  for line in io.lines(args[1] .. "." .. id) do
    local wid, ts, sig, body = line:match("^([^\t]*)\t([^\t]*)\t([^\t]*)\t(.*)$")
    requests[#requests + 1] = wrk.format("POST", wrk.path, {
      ["webhook-id"] = wid, ["webhook-timestamp"] = ts, ["webhook-signature"] = sig,
      ["Content-Type"] = "application/json"}, body)
  end
end

function request()
  i = i + 1
  if i > #requests then i = 1 end -- wrapping around replays ids: those answer 200 (duplicates)
  return requests[i]
end

function response(status, headers, body)
  if status == 202 then n202 = n202 + 1 elseif status == 200 then n200 = n200 + 1 else nother = nother + 1 end
end

function done(summary, latency, requests)
  local a, d, o = 0, 0, 0
  for _, t in ipairs(threads) do
    a, d, o = a + t:get("n202"), d + t:get("n200"), o + t:get("nother")
  end
  io.write(string.format("RESULT {\"requests\": %d, \"duration_us\": %d, \"accepted\": %d, \"duplicates\": %d, " ..
    "\"other\": %d, \"errors\": %d, \"p50_us\": %d, \"p99_us\": %d, \"max_us\": %d}\n",
    summary.requests, summary.duration, a, d, o,
    summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.status + summary.errors.timeout,
    latency:percentile(50), latency:percentile(99), latency.max))
end
