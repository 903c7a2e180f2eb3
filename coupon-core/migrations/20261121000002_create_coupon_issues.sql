-- One row per issued coupon. UNIQUE (coupon_id, user_id) makes redelivered issue messages
-- harmless: the consumer's INSERT IGNORE skips a row already present.
CREATE TABLE IF NOT EXISTS coupon_issues (
    id          BIGINT      NOT NULL AUTO_INCREMENT,
    coupon_id   BIGINT      NOT NULL,
    user_id     BIGINT      NOT NULL,
    issued_at   DATETIME(6) NOT NULL,
    expires_at  DATETIME(6) NULL,
    used_at     DATETIME(6) NULL,
    status      VARCHAR(16) NOT NULL DEFAULT 'ISSUED',
    request_id  CHAR(36)    NOT NULL,
    created_at  DATETIME(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
    updated_at  DATETIME(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6) ON UPDATE CURRENT_TIMESTAMP(6),
    PRIMARY KEY (id),
    UNIQUE KEY uk_coupon_issues_coupon_user (coupon_id, user_id),
    KEY idx_coupon_issues_user (user_id),
    CONSTRAINT fk_coupon_issues_coupon FOREIGN KEY (coupon_id) REFERENCES coupons (id)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4;
