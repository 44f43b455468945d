-- Ends a claim, atomically (gate::GateStore::settle; gate/memory.rs does the same).
--
-- KEYS: 1 the user, 2 the request ids waiting on the user's call
-- ARGV: 1 the user's hash, 2 the request id's hash or "", 3 the outcome (json) or "" (forget),
--       4 cooldown ms, 5 request id ttl ms, 6 the prefix of request id keys, 7 this call's claim
--       token, 8 how long to keep the outcome if someone waited on the call (ms)
local user, request, outcome = ARGV[1], ARGV[2], ARGV[3]
local cooldown, request_ttl, grace = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[8])

-- What a key holds, or nil if it is not ours to read (nothing the gateway wrote).
local function readable(value)
  local ok, decoded = pcall(cjson.decode, value)
  if ok and type(decoded) == 'table' then return decoded end
  return nil
end

-- The user's entry is this call's to change only while it holds this call's claim, or nobody
-- holds the user: a lapsed claim may have gone to another call since, whose outcome (remembered,
-- or in flight with its waiting request ids) is not this call's to replace.
local state = redis.call('GET', KEYS[1])
local decoded = state and readable(state)
local ours = not state or (decoded ~= nil and decoded.c == ARGV[7])

local waiting = {}
local waited_on = false
if ours then
  for _, id in ipairs(redis.call('SMEMBERS', KEYS[2])) do
    if id == '*' then waited_on = true else table.insert(waiting, id) end
  end
  redis.call('DEL', KEYS[2])
  local kept = cooldown
  if waited_on and grace > kept then kept = grace end
  if outcome ~= '' and kept > 0 then
    redis.call('SET', KEYS[1], '{"o":' .. outcome .. '}', 'PX', kept)
  else
    redis.call('DEL', KEYS[1])
  end
elseif outcome ~= '' and decoded and decoded.o and redis.call('PTTL', KEYS[1]) < cooldown then
  -- Another call's outcome stays, but no reset goes out within the cooldown of this one's either.
  redis.call('PEXPIRE', KEYS[1], cooldown)
end
if request ~= '' then table.insert(waiting, request) end

-- A request id's entry is this call's to write only while it is absent or names this user with no
-- outcome yet: an outcome told late must not replace what a retry of the id recorded since (its
-- first outcome is the one it keeps), nor an entry the id has since been given for another user.
for _, id in ipairs(waiting) do
  local key = ARGV[6] .. id
  local known = redis.call('GET', key)
  local entry = known and readable(known)
  if not known or (entry and entry.u == user and entry.o == nil) then
    if outcome ~= '' then
      -- Kept the request id's lifetime from the call's end, or what the id has left of its own
      -- if that is longer. An outcome told late (after an outage) may find both lapsed: the id
      -- is then not written again (and PX 0 would be an error, which retrying could never cure).
      local ttl = math.max(request_ttl, redis.call('PTTL', key))
      if ttl > 0 then
        redis.call('SET', key, '{"u":"' .. user .. '","o":' .. outcome .. '}', 'PX', ttl)
      end
    elseif known then
      -- Nothing happened: a retry of the id is processed anew.
      redis.call('DEL', key)
    end
  end
end
return 1
