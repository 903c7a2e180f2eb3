-- (user_id) is the leftmost prefix of idx_coupon_issues_user_status (user_id, status, id), which
-- serves every lookup by user. Each issue inserted into a random spot of both; one is enough.
ALTER TABLE coupon_issues DROP INDEX idx_coupon_issues_user;
