-- Atomic FCFS admission of one user to one coupon.
--
-- KEYS[1]  admission set of the coupon   (coupon:{id}:issued)   members are user ids
-- KEYS[2]  stock bound of the coupon     (coupon:{id}:stock)    total_quantity, or -1 if unlimited
-- ARGV[1]  user id
--
-- Returns  1  admitted (the user was added to the set)
--         -1  already admitted (duplicate)
--         -2  sold out (the set already holds `stock` members)
--         -3  not prepared (no stock key: the coupon's Redis state is missing)
--
-- Every check runs before the only write, and Redis runs a script without interleaving any
-- other command (https://redis.io/docs/latest/develop/interactive/programmability/eval-intro/),
-- so SCARD can never exceed the stock bound. Both keys share the hash tag {id}, so they live in
-- one Redis Cluster slot.
local stock = redis.call('GET', KEYS[2])
if not stock then
  return -3
end
if redis.call('SISMEMBER', KEYS[1], ARGV[1]) == 1 then
  return -1
end
stock = tonumber(stock)
if stock >= 0 and redis.call('SCARD', KEYS[1]) >= stock then
  return -2
end
redis.call('SADD', KEYS[1], ARGV[1])
return 1
