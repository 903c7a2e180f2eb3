-- Expiry jobs: when the EXPIRING_SOON notice went out (each coupon once), and the index that
-- finds coupons by state and end of validity.
ALTER TABLE coupon_issues
    ADD COLUMN expiring_notified_at DATETIME(6) NULL AFTER reserved_until,
    ADD KEY idx_coupon_issues_expiry (status, expires_at);
