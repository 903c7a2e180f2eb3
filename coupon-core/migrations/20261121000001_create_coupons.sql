-- Coupon policies. Amounts are integers in the smallest currency unit.
CREATE TABLE IF NOT EXISTS coupons (
    id                  BIGINT       NOT NULL AUTO_INCREMENT,
    title               VARCHAR(200) NOT NULL,
    coupon_type         VARCHAR(32)  NOT NULL,
    total_quantity      BIGINT       NULL,
    issued_quantity     BIGINT       NOT NULL DEFAULT 0,
    discount_type       VARCHAR(16)  NOT NULL,
    discount_value      BIGINT       NOT NULL,
    max_discount_amount BIGINT       NULL,
    min_order_amount    BIGINT       NOT NULL DEFAULT 0,
    issue_starts_at     DATETIME(6)  NOT NULL,
    issue_ends_at       DATETIME(6)  NOT NULL,
    valid_days          INT          NULL,
    valid_until         DATETIME(6)  NULL,
    status              VARCHAR(16)  NOT NULL DEFAULT 'ACTIVE',
    created_at          DATETIME(6)  NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
    updated_at          DATETIME(6)  NOT NULL DEFAULT CURRENT_TIMESTAMP(6) ON UPDATE CURRENT_TIMESTAMP(6),
    PRIMARY KEY (id),
    -- Last line of defence for "never over-issued": MySQL refuses a count above the stock.
    CONSTRAINT chk_coupons_issued_within_total
        CHECK (issued_quantity >= 0 AND (total_quantity IS NULL OR issued_quantity <= total_quantity))
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4;
