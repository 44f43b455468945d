-- One call's decision, atomically (gate::GateStore::claim; gate/memory.rs makes the same one).
-- Every key shares the hash tag "{g}", so one script's keys live in one Redis Cluster slot.
--
-- KEYS: 1 the user, 2 the request ids waiting on the user's call, 3 the request id (a key that is
--       never written when there is none), 4 the caller's rate, 5 the pool's rate, 6 the backend's
--       rate
-- ARGV: 1 the user's hash, 2 the request id's hash or "", 3 lease ms, 4 request id ttl ms,
--       5 caller rate/s, 6 caller burst (0: not kept here), 7 pool rate/s, 8 pool burst (0: none),
--       9 backend rate/s, 10 backend burst, 11 this call's claim token
-- Returns {"granted"} | {"busy"} | {"remembered", outcome json, cooldown left ms}
--       | {"limited", "caller"|"pool"|"backend", wait µs} | {"reused"}

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])

-- GCRA: the wait in µs (0: allowed) and the new theoretical arrival time.
local function gcra(key, rate, burst)
  local interval = 1000000 / rate
  local tat = tonumber(redis.call('GET', key)) or now
  if tat < now then tat = now end
  local new_tat = tat + interval
  local allow_at = new_tat - burst * interval
  if allow_at > now then return math.ceil(allow_at - now), nil end
  return 0, new_tat
end

local function spend(key, new_tat)
  redis.call('SET', key, string.format('%.0f', new_tat), 'PX', math.ceil((new_tat - now) / 1000) + 1)
end

local user, request = ARGV[1], ARGV[2]
local lease, request_ttl = tonumber(ARGV[3]), tonumber(ARGV[4])

if tonumber(ARGV[6]) > 0 then
  local wait, tat = gcra(KEYS[4], tonumber(ARGV[5]), tonumber(ARGV[6]))
  if wait > 0 then return {'limited', 'caller', wait} end
  spend(KEYS[4], tat)
end

-- What the gateway never wrote reads as nothing (fleet/read.lua), and is overwritten.
local state = read(KEYS[1])
local left = 0
if state and state.o then left = redis.call('PTTL', KEYS[1]) end

if request ~= '' then
  local known = read(KEYS[3])
  if known then
    if known.u ~= user then return {'reused'} end
    if known.o then return {'remembered', cjson.encode(known.o), left} end
  end
end

if state and state.o then
  if request ~= '' then
    redis.call('SET', KEYS[3], cjson.encode({u = user, o = state.o}), 'PX', request_ttl)
  end
  return {'remembered', cjson.encode(state.o), left}
end

if state then
  -- In flight elsewhere: the request id learns the outcome when that call settles, and "*" says
  -- someone waited (the outcome is then kept a moment even without a cooldown).
  redis.call('SADD', KEYS[2], '*')
  if request ~= '' then
    redis.call('SET', KEYS[3], cjson.encode({u = user}), 'PX', request_ttl)
    redis.call('SADD', KEYS[2], request)
  end
  redis.call('PEXPIRE', KEYS[2], math.max(redis.call('PTTL', KEYS[1]), 1))
  return {'busy'}
end

-- Both budgets, or neither.
local pool_tat, backend_tat, wait
if tonumber(ARGV[8]) > 0 then
  wait, pool_tat = gcra(KEYS[5], tonumber(ARGV[7]), tonumber(ARGV[8]))
  if wait > 0 then return {'limited', 'pool', wait} end
end
wait, backend_tat = gcra(KEYS[6], tonumber(ARGV[9]), tonumber(ARGV[10]))
if wait > 0 then return {'limited', 'backend', wait} end
if pool_tat then spend(KEYS[5], pool_tat) end
spend(KEYS[6], backend_tat)

redis.call('SET', KEYS[1], cjson.encode({c = ARGV[11]}), 'PX', lease)
redis.call('DEL', KEYS[2])
if request ~= '' then
  redis.call('SADD', KEYS[2], request)
  redis.call('PEXPIRE', KEYS[2], lease)
  redis.call('SET', KEYS[3], cjson.encode({u = user}), 'PX', request_ttl)
end
return {'granted'}
