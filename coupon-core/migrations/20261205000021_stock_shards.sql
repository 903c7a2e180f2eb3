-- How many stock shards a policy's Redis admission state is split into (issue 16 item 4; see
-- coupon_core::issue::admission, stock shards). 1 keeps the unsharded key layout. Fixed once
-- the policy exists: a user's home shard is the user id's hash modulo this count.
ALTER TABLE coupons ADD COLUMN stock_shards SMALLINT UNSIGNED NOT NULL DEFAULT 1;
