-- The consumer claims the admissions of issue messages before it writes their rows: one step,
-- atomic with undo.lua (Redis runs one script at a time), so a message and the undo of its
-- admission can never both win.
--
-- KEYS[1]  admission set of the coupon's home shard   (coupon:{id}:issued, or its shard's)
-- KEYS[2]  pending admissions of that shard           (coupon:{id}:pending)  hash: user -> request id
-- ARGV     pairs: user id, request id of the message, for each message in order
--
-- Returns one integer per pair:
--   1  claimed: the user's admission was pending under this request id; the mark is cleared,
--      so an undo of that request finds nothing to undo (the publisher then knows the message
--      became durable although its acknowledgement was lost, and answers 202);
--   2  durable already: a member without a pending mark (its publish was acknowledged, or a
--      message of the same admission was claimed before: a redelivery);
--   0  not this message's admission: the user is no member (the admission was undone), or is
--      pending under another request (this message's admission was undone, and the user was
--      admitted again by a later request, which has its own message or undo).
local out = {}
for i = 1, #ARGV, 2 do
  local user, request = ARGV[i], ARGV[i + 1]
  if redis.call('SISMEMBER', KEYS[1], user) == 0 then
    out[#out + 1] = 0
  else
    local pending = redis.call('HGET', KEYS[2], user)
    if not pending then
      out[#out + 1] = 2
    elseif pending == request then
      redis.call('HDEL', KEYS[2], user)
      out[#out + 1] = 1
    else
      out[#out + 1] = 0
    end
  end
end
return out
