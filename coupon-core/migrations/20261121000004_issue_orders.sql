-- The order an issued coupon is used for, and the index behind a user's coupon list
-- (keyset pagination by id within one user and status).
ALTER TABLE coupon_issues
    ADD COLUMN order_id VARCHAR(64) NULL AFTER status,
    ADD KEY idx_coupon_issues_user_status (user_id, status, id);
