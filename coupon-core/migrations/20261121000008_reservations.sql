-- Checkout holds: a RESERVED coupon carries its order, the order amount and the end of the hold.
-- (status, reserved_until) lets the sweeper find expired holds; order_id lets payment results
-- find the coupon they settle.
ALTER TABLE coupon_issues
    ADD COLUMN order_amount   BIGINT      NULL AFTER order_id,
    ADD COLUMN reserved_until DATETIME(6) NULL AFTER order_amount,
    ADD KEY idx_coupon_issues_hold (status, reserved_until),
    ADD KEY idx_coupon_issues_order (order_id);
