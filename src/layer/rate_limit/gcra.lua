-- One rate-limit decision, atomically: GCRA (the generic cell rate algorithm, ITU-T I.371),
-- exactly as governor runs it in process, so both modes admit the same requests.
--
-- KEYS[1]  the bucket: its theoretical arrival time (TAT), microseconds since the epoch
-- ARGV[1]  T, the emission interval: microseconds per token (1 s / requests_per_second)
-- ARGV[2]  the burst
-- returns  {allowed (1 or 0), remaining tokens, microseconds to wait when refused}
--
-- The clock is Redis's own (TIME), so replicas whose clocks disagree still share one bucket.
-- Redis 5+ replicates a script's effects, which lets it write after reading TIME; older
-- versions need the call below, newer ones ignore it.
if redis.replicate_commands then redis.replicate_commands() end

local t = tonumber(ARGV[1])
local tau = t * (tonumber(ARGV[2]) - 1)
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000000 + tonumber(time[2])
local tat = tonumber(redis.call('GET', KEYS[1])) or now

-- Conforming when no earlier than TAT - tau (the burst's tolerance).
local earliest = tat - tau
if now < earliest then
  return {0, 0, earliest - now}
end

local next_tat = math.max(tat, now) + t
-- The key lives until its bucket is full again (TAT reached): an expired key and a full
-- bucket mean the same, so Redis holds only clients seen recently.
redis.call('SET', KEYS[1], string.format('%.0f', next_tat),
  'PX', math.ceil((next_tat - now) / 1000))
-- governor's StateSnapshot::remaining_burst_capacity.
return {1, math.floor(math.min(now + tau + t - next_tat, tau + t) / t), 0}
