-- Every code search walks an index scoped to its topic in id order, so its cost does not grow
-- with other topics' codes: (topic_id, id) for no filter, (topic_id, redeemed, id) for the
-- redeemed filter (a virtual column: IS NOT NULL alone would be a range, not id-ordered).
ALTER TABLE coupon_codes
    ADD COLUMN redeemed TINYINT(1) AS (redeemed_by IS NOT NULL) VIRTUAL,
    ADD KEY idx_coupon_codes_topic (topic_id, id),
    ADD KEY idx_coupon_codes_topic_redeemed (topic_id, redeemed, id);
