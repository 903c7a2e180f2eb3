-- The expiring-soon notice job takes un-noticed coupons in expiry order. With only
-- (status, expires_at), every batch walked past all coupons already noticed in the window
-- before finding un-noticed ones: quadratic in the window's size (300,000 coupons expiring
-- within the window kept MariaDB busy for minutes in `make bench`). With the notice column
-- before expires_at, `expiring_notified_at IS NULL` is an equality prefix and each batch
-- reads only the rows it takes.
ALTER TABLE coupon_issues
    ADD KEY idx_coupon_issues_expiring (status, expiring_notified_at, expires_at);
