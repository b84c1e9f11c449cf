-- Replays a file of pre-built raw HTTP requests, each record "<length>\n<bytes>".
-- Arguments (after `--`): <file> <threads>. Thread k sends records k, k+threads, ...
-- in order, so no two threads send the same request; a thread that reaches the end
-- of its share starts again (counted as `wrapped`). done() prints one line:
-- BENCH_JSON {...} with the request count, errors and latency percentiles (us).

local threads = {}
local nthreads_seen = 0

function setup(thread)
   thread:set("tid", nthreads_seen)
   nthreads_seen = nthreads_seen + 1
   table.insert(threads, thread)
end

local reqs = {}
local n = 0
local idx = 0
wrapped = 0
statuses = {}

function init(args)
   local path = args[1]
   local nthreads = tonumber(args[2]) or 1
   local f = assert(io.open(path, "rb"))
   local data = f:read("*a")
   f:close()
   local pos = 1
   local i = 0
   local size = #data
   while pos <= size do
      local nl = string.find(data, "\n", pos, true)
      if not nl then break end
      local len = tonumber(string.sub(data, pos, nl - 1))
      if (i % nthreads) == tid then
         n = n + 1
         reqs[n] = string.sub(data, nl + 1, nl + len)
      end
      i = i + 1
      pos = nl + len + 1
   end
   assert(n > 0, "no requests for thread " .. tid .. " in " .. path)
   math.randomseed(os.time() + tid)
end

function request()
   idx = idx + 1
   if idx > n then
      idx = 1
      wrapped = wrapped + 1
   end
   return reqs[idx]
end

sample_error = ""

function response(status, headers, body)
   statuses[status] = (statuses[status] or 0) + 1
   if status >= 400 and sample_error == "" then
      sample_error = string.sub(body or "", 1, 300)
   end
end

local function json_string(text)
   text = string.gsub(text, '[%c"\\]', function(c)
      if c == '"' then return '\\"' elseif c == "\\" then return "\\\\" end
      return " "
   end)
   return '"' .. text .. '"'
end

function done(summary, latency, requests)
   local w = 0
   local counts = {}
   for _, t in ipairs(threads) do
      w = w + (tonumber(t:get("wrapped")) or 0)
      for code, count in pairs(t:get("statuses") or {}) do
         counts[code] = (counts[code] or 0) + count
      end
   end
   local sample = ""
   for _, t in ipairs(threads) do
      if sample == "" then sample = t:get("sample_error") or "" end
   end
   local parts = {}
   for code, count in pairs(counts) do
      table.insert(parts, string.format('"%d":%d', code, count))
   end
   local e = summary.errors
   io.write(string.format(
      'BENCH_JSON {"requests":%d,"duration_us":%d,"bytes":%d,' ..
      '"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d},' ..
      '"latency_us":{"min":%d,"max":%d,"mean":%.1f,"stdev":%.1f,' ..
      '"p50":%d,"p75":%d,"p90":%d,"p99":%d,"p999":%d},"wrapped":%d,' ..
      '"statuses":{%s},"sample_error":%s}\n',
      summary.requests, summary.duration, summary.bytes,
      e.connect, e.read, e.write, e.status, e.timeout,
      latency.min, latency.max, latency.mean, latency.stdev,
      latency:percentile(50), latency:percentile(75), latency:percentile(90),
      latency:percentile(99), latency:percentile(99.9), w, table.concat(parts, ","), json_string(sample)))
end
