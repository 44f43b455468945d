-- Ends a claim, atomically (gate::GateStore::settle; gate/memory.rs does the same).
--
-- KEYS: 1 the user, 2 the request ids waiting on the user's call
-- ARGV: 1 the user's hash, 2 the request id's hash or "", 3 the outcome (json) or "" (forget),
--       4 cooldown ms, 5 request id ttl ms, 6 the prefix of request id keys, 7 this call's claim
--       token, 8 how long to keep the outcome if someone waited on the call (ms)
local user, request, outcome = ARGV[1], ARGV[2], ARGV[3]
local cooldown, request_ttl, grace = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[8])

-- The user's entry is this call's to change only while it holds this call's claim, or nobody
-- holds the user: a lapsed claim may have gone to another call since, whose outcome (remembered,
-- or in flight with its waiting request ids) is not this call's to replace.
local state, held = read(KEYS[1])
local ours = not held or (state ~= nil and state.c == ARGV[7])
-- Redis' clock in ms: how long a late outcome left in a claim (below) is kept is told in it.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)

local waiting = {}
local waited_on = false
if ours then
  local members = redis.pcall('SMEMBERS', KEYS[2])
  if members.err == nil then
    for _, id in ipairs(members) do
      if id == '*' then waited_on = true else table.insert(waiting, id) end
    end
  end
  redis.call('DEL', KEYS[2])
  local remembered, kept = outcome, cooldown
  -- An outcome a late settle left in this claim: remembered if this call sent nothing, and its
  -- cooldown holds either way.
  local late_until = state and type(state.l) == 'table' and tonumber(state.lu)
  if late_until and late_until > now then
    if remembered == '' then
      remembered, kept = cjson.encode(state.l), late_until - now
    elseif late_until - now > kept then
      kept = late_until - now
    end
  end
  if waited_on and grace > kept then kept = grace end
  if remembered ~= '' and kept > 0 then
    redis.call('SET', KEYS[1], '{"o":' .. remembered .. '}', 'PX', kept)
  else
    redis.call('DEL', KEYS[1])
  end
elseif outcome ~= '' and state and state.o then
  -- Another call's outcome stays, but no reset goes out within the cooldown of this one's either.
  local left = redis.call('PTTL', KEYS[1])
  if left >= 0 and left < cooldown then redis.call('PEXPIRE', KEYS[1], cooldown) end
elseif outcome ~= '' and state and state.c and cooldown > 0 then
  -- Another call is in flight: this outcome is left in its claim, whose settle keeps it (should
  -- that call send nothing, a reset may still have gone out, and its cooldown holds).
  local left = redis.call('PTTL', KEYS[1])
  local late_until = type(state.l) == 'table' and tonumber(state.lu)
  if left > 0 and not (late_until and late_until >= now + cooldown) then
    state.l = cjson.decode(outcome)
    state.lu = now + cooldown
    redis.call('SET', KEYS[1], cjson.encode(state), 'PX', left)
  end
end
if request ~= '' then table.insert(waiting, request) end

-- A request id's entry is this call's to write only while it is absent or names this user with no
-- outcome yet: an outcome told late must not replace what a retry of the id recorded since (its
-- first outcome is the one it keeps), nor an entry the id has since been given for another user.
for _, id in ipairs(waiting) do
  local key = ARGV[6] .. id
  local entry, known = read(key)
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
