-- One row per use of an issued coupon for an order; a cancelled order marks its row CANCELLED.
-- UNIQUE (coupon_issue_id, order_id): one redemption of a coupon per order.
CREATE TABLE IF NOT EXISTS coupon_redemptions (
    id              BIGINT      NOT NULL AUTO_INCREMENT,
    coupon_issue_id BIGINT      NOT NULL,
    coupon_id       BIGINT      NOT NULL,
    user_id         BIGINT      NOT NULL,
    order_id        VARCHAR(64) NOT NULL,
    order_amount    BIGINT      NOT NULL,
    discount_amount BIGINT      NOT NULL,
    final_amount    BIGINT      NOT NULL,
    status          VARCHAR(16) NOT NULL DEFAULT 'USED',
    redeemed_at     DATETIME(6) NOT NULL,
    cancelled_at    DATETIME(6) NULL,
    PRIMARY KEY (id),
    UNIQUE KEY uk_coupon_redemptions_issue_order (coupon_issue_id, order_id),
    KEY idx_coupon_redemptions_coupon (coupon_id),
    CONSTRAINT fk_coupon_redemptions_issue FOREIGN KEY (coupon_issue_id) REFERENCES coupon_issues (id)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4;
