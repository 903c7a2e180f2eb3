-- Undoes one admission after its issue message could not be published.
--
-- KEYS[1]  admission set of the coupon   (coupon:{id}:issued)
-- ARGV[1]  user id whose admission is undone
--
-- Returns 1 when the member was removed, 0 when it was not there. Only this exact member is
-- removed: the slot it held returns to the stock for the next request.
return redis.call('SREM', KEYS[1], ARGV[1])
