-- Signed WhatsApp webhooks, each a new message (prepared by bench/channels.py, one a line:
-- "<path>\t<X-Hub-Signature-256>\t<body>" in the file named by PARLEY_WEBHOOKS), in turn.
local lines = {}
for line in io.lines(os.getenv("PARLEY_WEBHOOKS")) do lines[#lines + 1] = line end
local n = 0
local offset = 0

setup = function(thread)
  thread:set("offset", offset)
  offset = offset + 1
end

request = function()
  n = n + 1
  local line = lines[((n * 2 + offset) % #lines) + 1]
  local path, signature, body = line:match("^([^\t]+)\t([^\t]+)\t(.*)$")
  return wrk.format("POST", path, {["X-Hub-Signature-256"] = signature, ["Content-Type"] = "application/json"}, body)
end
