-- Lends units of a shard's stock to another shard of the same coupon (the first step of a
-- transfer, admission/transfer.rs), run on the donor's slot.
--
-- KEYS[1]  admission set of the donor    (coupon:{id:sD}:issued)
-- KEYS[2]  stock bound of the donor      (coupon:{id:sD}:stock)
-- KEYS[3]  what the donor lent           (coupon:{id:sD}:lent)   hash: recipient index -> units
-- ARGV[1]  the recipient's shard index
--
-- Returns {n, lent}: n units taken off the donor's stock now (half of its free units, rounded
-- up; 0 when it has none free), and lent, the donor's count of units lent to that recipient so
-- far, this loan included. {-3, 0} when the donor has no stock key (its state is missing).
--
-- The stock bound and the lent count move together in one script, so `stock + sum(lent)` never
-- changes here; the units exist nowhere until the recipient's borrow.lua adds them, so a
-- transfer cut between the two steps can only leave units unused, never count them twice.
local stock = redis.call('GET', KEYS[2])
if not stock then
  return {-3, 0}
end
stock = tonumber(stock)
local free = 0
if stock >= 0 then
  free = stock - redis.call('SCARD', KEYS[1])
end
if free <= 0 then
  return {0, tonumber(redis.call('HGET', KEYS[3], ARGV[1]) or '0')}
end
local n = math.ceil(free / 2)
redis.call('DECRBY', KEYS[2], n)
return {n, redis.call('HINCRBY', KEYS[3], ARGV[1], n)}
