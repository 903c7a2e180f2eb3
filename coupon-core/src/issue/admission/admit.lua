-- Atomic FCFS admission of one user to one coupon.
--
-- KEYS[1]  admission set of the coupon   (coupon:{id}:issued)   members are user ids
-- KEYS[2]  stock bound of the coupon     (coupon:{id}:stock)    total_quantity, or -1 if unlimited
-- KEYS[3]  pending admissions            (coupon:{id}:pending)  hash: user id -> request id
-- ARGV[1]  user id
-- ARGV[2]  request id of this admission (a UUID)
--
-- Returns  1  admitted (the user was added to the set, and marked pending under ARGV[2]), also
--             when this same request (ARGV[2]) admitted the user before: a script re-sent
--             after its connection dropped (the cluster client re-sends to the slot's new
--             master) answers what its first run did, so a retry can never turn a real
--             admission into "in progress"
--         -1  already admitted (duplicate), and no longer pending: the admission stands
--         -2  sold out (the set already holds `stock` members)
--         -3  not prepared (no stock key: the coupon's Redis state is missing)
--         -4  already admitted and still pending: another request's admission may yet be
--             undone, so "already issued" would not be known to be true
--
-- Every check runs before the writes, and Redis runs a script without interleaving any other
-- command (https://redis.io/docs/latest/develop/interactive/programmability/eval-intro/), so
-- SCARD can never exceed the stock bound. The pending mark is cleared once the admission is
-- durable (its issue message acknowledged by the broker, or its code redeem committed);
-- undo.lua removes an admission only under its own request id. All keys share the hash tag {id}, so
-- they live in one Redis Cluster slot.
local stock = redis.call('GET', KEYS[2])
if not stock then
  return -3
end
if redis.call('SISMEMBER', KEYS[1], ARGV[1]) == 1 then
  local pending = redis.call('HGET', KEYS[3], ARGV[1])
  if pending == ARGV[2] then
    return 1
  end
  if pending then
    return -4
  end
  return -1
end
stock = tonumber(stock)
if stock >= 0 and redis.call('SCARD', KEYS[1]) >= stock then
  return -2
end
redis.call('SADD', KEYS[1], ARGV[1])
redis.call('HSET', KEYS[3], ARGV[1], ARGV[2])
return 1
