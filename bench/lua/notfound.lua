-- 404 flood: cycle over codes no link has (BENCH_CODES, one a line), each
-- thread starting at its own place, so every code is asked for many times
-- and only its first miss may reach the database. Answers other than 404
-- are counted in "unexpected".

dofile(os.getenv("BENCH_LUA_DIR") .. "/report.lua")

local requests = {}
local position = 0
unexpected = 0

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

function response(status, headers, body)
   if status ~= 404 then
      unexpected = unexpected + 1
   end
end
