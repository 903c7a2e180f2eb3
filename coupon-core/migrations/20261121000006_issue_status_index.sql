-- Per-coupon counts by status (the stats endpoint) read this index alone.
ALTER TABLE coupon_issues ADD KEY idx_coupon_issues_coupon_status (coupon_id, status);
