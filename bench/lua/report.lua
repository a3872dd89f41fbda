-- Shared by every bench script: number the threads, then print one line of
-- JSON after wrk's own summary for bench/wrk.py to read.

local threads = {}

function setup(thread)
   thread:set("index", #threads)
   thread:set("thread_count", tonumber(os.getenv("BENCH_THREADS") or "1"))
   table.insert(threads, thread)
end

local function thread_sum(name)
   local total = 0
   for _, thread in ipairs(threads) do
      total = total + (thread:get(name) or 0)
   end
   return total
end

function done(summary, latency, requests)
   local errors = summary.errors
   io.write(string.format(
      "BENCH_JSON {\"requests\":%d,\"duration_us\":%d,\"connect\":%d," ..
      "\"read\":%d,\"write\":%d,\"status\":%d,\"timeout\":%d," ..
      "\"p50_us\":%d,\"p90_us\":%d,\"p99_us\":%d,\"max_us\":%d," ..
      "\"unexpected\":%d,\"wrapped\":%d}\n",
      summary.requests, summary.duration, errors.connect, errors.read,
      errors.write, errors.status, errors.timeout,
      latency:percentile(50), latency:percentile(90), latency:percentile(99),
      latency.max, thread_sum("unexpected"), thread_sum("wrapped")))
end
