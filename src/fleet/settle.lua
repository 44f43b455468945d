-- Ends a claim, atomically (gate::GateStore::settle; gate/memory.rs does the same).
--
-- KEYS: 1 the user, 2 the request ids waiting on the user's call
-- ARGV: 1 the user's hash, 2 the request id's hash or "", 3 the outcome (json) or "" (forget),
--       4 cooldown ms, 5 request id ttl ms, 6 the prefix of request id keys
local user, request, outcome = ARGV[1], ARGV[2], ARGV[3]
local cooldown, request_ttl = tonumber(ARGV[4]), tonumber(ARGV[5])

local waiting = redis.call('SMEMBERS', KEYS[2])
if request ~= '' then table.insert(waiting, request) end
redis.call('DEL', KEYS[2])

if outcome ~= '' and cooldown > 0 then
  redis.call('SET', KEYS[1], '{"o":' .. outcome .. '}', 'PX', cooldown)
else
  redis.call('DEL', KEYS[1])
end

for _, id in ipairs(waiting) do
  local key = ARGV[6] .. id
  if outcome ~= '' then
    redis.call('SET', key, '{"u":"' .. user .. '","o":' .. outcome .. '}', 'PX', request_ttl)
  else
    -- Nothing happened: a retry of the id is processed anew.
    redis.call('DEL', key)
  end
end
return 1
