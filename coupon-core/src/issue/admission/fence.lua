-- Fences a round of admissions before WAIT (admission/replicas.rs): checks, on the node that
-- serves the coupon's slot now, that each admission of the round is still there, then makes one
-- write of its own, so that a WAIT after this script on the same connection covers every one of
-- them (WAIT counts the replicas that hold a connection's last write, and Redis runs commands
-- one at a time, so the admissions, answered before this script was sent, come earlier in the
-- node's replication stream).
--
-- KEYS[1]  pending admissions            (coupon:{id}:pending)  hash: user id -> request id
-- KEYS[2]  the coupon's fence            (coupon:{id}:fence)    written here, expires in 60 s
-- ARGV     pairs: user id, request id of that user's admission
--
-- Returns, per pair, 1 when that admission is still pending under its request id here, 0 when
-- it is not: a failover to a replica that never received it lost it. A pending admission is
-- only cleared after its WAIT (the broker acknowledged its message, or its code redeem
-- committed), so during the round its mark is there unless it was lost.
local held = {}
for i = 1, #ARGV, 2 do
  if redis.call('HGET', KEYS[1], ARGV[i]) == ARGV[i + 1] then
    held[#held + 1] = 1
  else
    held[#held + 1] = 0
  end
end
redis.call('SET', KEYS[2], '1', 'PX', 60000)
return held
