-- 404 flood: a fresh random code on every request, so no cache ever holds
-- it. Answers other than 404 are counted in "unexpected".

dofile(os.getenv("BENCH_LUA_DIR") .. "/report.lua")

local alphabet = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
local chars = {}
unexpected = 0

function init(args)
   math.randomseed(tonumber(os.getenv("BENCH_SEED") or "1") + index * 7919)
end

function request()
   for i = 1, 12 do
      local at = math.random(#alphabet)
      chars[i] = alphabet:sub(at, at)
   end
   return wrk.format("GET", "/nf" .. table.concat(chars))
end

function response(status, headers, body)
   if status ~= 404 then
      unexpected = unexpected + 1
   end
end
