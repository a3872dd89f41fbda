-- Redirect cold: request every code of BENCH_CODES once, the threads taking
-- alternate lines. Running out starts over and is counted in "wrapped", which
-- tells the harness the run was longer than its codes.

dofile(os.getenv("BENCH_LUA_DIR") .. "/report.lua")

local requests = {}
local position = 0
wrapped = 0

function init(args)
   local line = 0
   for code in io.lines(os.getenv("BENCH_CODES")) do
      if line % thread_count == index then
         requests[#requests + 1] = wrk.format("GET", "/" .. code)
      end
      line = line + 1
   end
end

function request()
   position = position + 1
   if position > #requests then
      position = 1
      wrapped = wrapped + 1
   end
   return requests[position]
end
