-- Policy administration (soft delete, use start, whether a cancelled order restores the coupon)
-- and the order an issued coupon was used for.
ALTER TABLE coupons
    ADD COLUMN valid_from        DATETIME(6) NULL AFTER valid_until,
    ADD COLUMN restore_on_cancel BOOLEAN     NOT NULL DEFAULT TRUE AFTER status,
    ADD COLUMN deleted_at        DATETIME(6) NULL AFTER restore_on_cancel;
