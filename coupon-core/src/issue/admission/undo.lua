-- Undoes one admission that did not become durable (its issue message could not be published,
-- its code redeem rolled back, or the admission call's own answer was lost).
--
-- KEYS[1]  admission set of the coupon   (coupon:{id}:issued)
-- KEYS[2]  pending admissions            (coupon:{id}:pending)  hash: user id -> request id
-- ARGV[1]  user id whose admission is undone
-- ARGV[2]  request id of that admission
--
-- Returns 1 when the admission was removed, 0 when there was none under this request id. Only
-- an admission still pending under this exact request id is removed: an admission of another
-- request (another click of the same user, a code redeem) or one already durable is never
-- touched, and an admission that never ran is a no-op. The slot returns to the stock.
if redis.call('HGET', KEYS[2], ARGV[1]) ~= ARGV[2] then
  return 0
end
redis.call('HDEL', KEYS[2], ARGV[1])
return redis.call('SREM', KEYS[1], ARGV[1])
