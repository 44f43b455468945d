-- Put before fleet/claim.lua and fleet/settle.lua (each script is one EVAL, so they cannot share
-- it otherwise).
--
-- What a key holds, decoded; nil if nothing, or if it holds what the gateway never writes (another
-- type, not JSON). The second value says whether it holds anything: a claim overwrites what it
-- cannot read, a settle leaves it alone.
local function read(key)
  local value = redis.pcall('GET', key)
  if not value then return nil, false end
  if type(value) == 'string' then
    local ok, decoded = pcall(cjson.decode, value)
    if ok and type(decoded) == 'table' then return decoded, true end
  end
  return nil, true
end

