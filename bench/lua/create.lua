-- Create: POST /api/v1/links with a custom code unique to this run
-- (BENCH_NONCE), thread and request, authorised by BENCH_KEY.

dofile(os.getenv("BENCH_LUA_DIR") .. "/report.lua")

local counter = 0
local headers = {}
local prefix = ""

function init(args)
   headers["Authorization"] = "Bearer " .. os.getenv("BENCH_KEY")
   headers["Content-Type"] = "application/json"
   prefix = os.getenv("BENCH_NONCE") .. index .. "-"
end

function request()
   counter = counter + 1
   local code = prefix .. counter
   local body = string.format(
      '{"url":"https://example.com/landing/%s?utm_source=bench","code":"%s"}',
      code, code)
   return wrk.format("POST", "/api/v1/links", headers, body)
end
