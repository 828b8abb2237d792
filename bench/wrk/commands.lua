-- Commands at a fixed concurrency: half start a conversation, half continue one of the
-- conversations created before the run (ids in the file named by PARLEY_IDS).
local ids = {}
for line in io.lines(os.getenv("PARLEY_IDS")) do ids[#ids + 1] = line end
local token = os.getenv("PARLEY_TOKEN")
local n = 0
wrk.headers["Authorization"] = "Bearer " .. token
wrk.headers["Content-Type"] = "application/json"
local start_body = '{"config_id":"support-bot","channel":"webchat","user_id":"u-bench","initial_message":"I want to check my order status"}'

request = function()
  n = n + 1
  if n % 2 == 0 then
    return wrk.format("POST", "/api/v1/orchestration/conversations", nil, start_body)
  end
  local id = ids[(n % #ids) + 1]
  return wrk.format("POST", "/api/v1/orchestration/conversations/" .. id .. "/messages", nil,
    '{"message":"My order number is ORD-' .. n .. '"}')
end
