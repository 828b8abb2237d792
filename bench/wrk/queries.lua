-- Reads of conversation state, round-robin over conversations created before the run.
local ids = {}
for line in io.lines(os.getenv("PARLEY_IDS")) do ids[#ids + 1] = line end
wrk.headers["Authorization"] = "Bearer " .. os.getenv("PARLEY_TOKEN")
local n = 0
request = function()
  n = n + 1
  return wrk.format("GET", "/api/v1/orchestration/conversations/" .. ids[(n % #ids) + 1])
end
