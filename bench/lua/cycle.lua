-- Redirect hot: cycle over a small set of codes (BENCH_CODES, one a line),
-- each thread starting at its own place.

dofile(os.getenv("BENCH_LUA_DIR") .. "/report.lua")

local requests = {}
local position = 0

function init(args)
   for code in io.lines(os.getenv("BENCH_CODES")) do
      requests[#requests + 1] = wrk.format("GET", "/" .. code)
   end
   position = index * math.floor(#requests / thread_count)
end

function request()
   position = position % #requests + 1
   return requests[position]
end
