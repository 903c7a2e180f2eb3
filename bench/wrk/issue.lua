-- wrk script of `make bench`: POST /api/v1/coupons/{id}/issues with {"user_id": N}.
--
--   wrk -t2 -c64 -d10s -s bench/wrk/issue.lua http://127.0.0.1:8090 -- PATH MODE START COUNT THREADS
--
-- PATH   the issue path, e.g. /api/v1/coupons/42/issues
-- MODE   fresh: every request a user id no request used before (thread t sends
--               START + t * 1e9 + 1, + 2, ...; wrk threads start at 0)
--        cycle: ids START .. START + COUNT - 1 in turn (repeat users)
-- START  first user id
-- COUNT  ids to cycle through (cycle only)
-- THREADS  wrk's -t (cycle only: thread t sends the ids t, t + THREADS, ... of the range)
--
-- BENCH_ADDRS (see setup below) sends each thread to one of several servers.
-- The environment variable BENCH_TOKEN, when set, is sent as `Authorization: Bearer ...`:
-- coupon-bench mints one admin token, which acts for the user each body names (wrk cannot
-- sign a token per user; coupon-api checks either kind with the same HS256 verification).
--
-- done() prints one line `WRK_JSON {...}` with wrk's own counts and latency percentiles (µs),
-- which coupon-bench parses. wrk counts any status >= 400 under status_errors: for the
-- rejection path those are the expected 409s; coupon-bench checks outcomes against the API's
-- own counters instead.

local threads = {}

-- BENCH_ADDRS, when set ("host:port,host:port"), spreads the load over several servers (several
-- coupon-api instances): thread t connects to address t mod N, so run with -t a multiple of N.
local spread = {}
for host, port in string.gmatch(os.getenv("BENCH_ADDRS") or "", "([^,:]+):(%d+)") do
  table.insert(spread, { host = host, port = port })
end

function setup(thread)
  if #spread > 0 then
    local target = spread[(#threads % #spread) + 1]
    thread.addr = wrk.lookup(target.host, target.port)[1]
  end
  thread:set("thread_index", #threads)
  table.insert(threads, thread)
end

function init(args)
  path = args[1]
  mode = args[2] or "fresh"
  start = tonumber(args[3] or "1")
  count = tonumber(args[4] or "0")
  thread_count = tonumber(args[5] or "1")
  sent = 0
  headers = { ["Content-Type"] = "application/json" }
  local token = os.getenv("BENCH_TOKEN")
  if token and token ~= "" then
    headers["Authorization"] = "Bearer " .. token
  end
end

function request()
  local user
  if mode == "cycle" then
    user = start + ((sent * thread_count + thread_index) % count)
  else
    user = start + thread_index * 1000000000 + sent
  end
  sent = sent + 1
  return wrk.format("POST", path, headers, '{"user_id":' .. string.format("%d", user) .. '}')
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRK_JSON {"requests":%d,"duration_us":%d,"connect_errors":%d,"read_errors":%d,' ..
    '"write_errors":%d,"status_errors":%d,"timeouts":%d,"p50_us":%d,"p99_us":%d,' ..
    '"p999_us":%d,"max_us":%d}\n',
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(99), latency:percentile(99.9), latency.max))
end
