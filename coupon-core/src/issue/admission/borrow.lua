-- Adds what a donor shard lent to this shard's stock (the second step of a transfer,
-- admission/transfer.rs), run on the recipient's slot. Idempotent: it takes the donor's
-- running count, not an increment, so running it twice, late, or out of order with another
-- transfer from the same donor adds each lent unit exactly once.
--
-- KEYS[1]  stock bound of the recipient  (coupon:{id:sR}:stock)
-- KEYS[2]  what the recipient borrowed   (coupon:{id:sR}:borrowed)  hash: donor index -> units
-- ARGV[1]  the donor's shard index
-- ARGV[2]  the donor's count of units lent to this shard so far (lend.lua's `lent`)
--
-- Returns the units added now (0 when they were already), -3 when the recipient has no stock
-- key (its state is missing: a rebuild accounts for what it was lent, so nothing is added).
if redis.call('EXISTS', KEYS[1]) == 0 then
  return -3
end
local seen = tonumber(redis.call('HGET', KEYS[2], ARGV[1]) or '0')
local lent = tonumber(ARGV[2])
if lent <= seen then
  return 0
end
redis.call('HSET', KEYS[2], ARGV[1], lent)
redis.call('INCRBY', KEYS[1], lent - seen)
return lent - seen
