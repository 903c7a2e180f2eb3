-- Order ids are compared byte for byte: under the tables' default utf8mb4 collation `abc` and
-- `ABC` were one order, so a payment result for one settled the other's holds and an order id
-- of one user blocked another user's differently-cased order. Order ids are ASCII by
-- construction (OrderId::parse); utf8mb4_bin keeps the character set the tables use.
ALTER TABLE coupon_orders
    MODIFY order_id VARCHAR(64) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL;
ALTER TABLE coupon_issues
    MODIFY order_id VARCHAR(64) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NULL;
ALTER TABLE coupon_redemptions
    MODIFY order_id VARCHAR(64) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL;

-- Every checkout hold an order had, and how it ended: a coupon row forgets its order when its
-- hold is released, so without this a payment result arriving after the release (a payment
-- slower than the hold, or a FAILED followed by a retried COMPLETED) could not find what it
-- paid for. outcome: HELD while the coupon is RESERVED for the order, then CONFIRMED,
-- RELEASED (checkout abandoned or payment failed) or EXPIRED (the sweeper). Ended holds are
-- purged after JOB_RETENTION_SECS.
CREATE TABLE coupon_holds (
    order_id        VARCHAR(64) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,
    coupon_issue_id BIGINT      NOT NULL,
    user_id         BIGINT      NOT NULL,
    order_amount    BIGINT      NOT NULL,
    reserved_at     DATETIME(6) NOT NULL,
    reserved_until  DATETIME(6) NOT NULL,
    outcome         VARCHAR(16) CHARACTER SET ascii NOT NULL DEFAULT 'HELD',
    ended_at        DATETIME(6) NULL,
    PRIMARY KEY (order_id, coupon_issue_id),
    KEY idx_coupon_holds_issue (coupon_issue_id, outcome),
    KEY idx_coupon_holds_ended (ended_at)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4;

-- The holds open at the upgrade.
INSERT INTO coupon_holds (order_id, coupon_issue_id, user_id, order_amount, reserved_at,
                          reserved_until, outcome)
SELECT order_id, id, user_id, COALESCE(order_amount, 0), COALESCE(reserved_until, NOW(6)),
       COALESCE(reserved_until, NOW(6)), 'HELD'
FROM coupon_issues
WHERE status = 'RESERVED' AND order_id IS NOT NULL;
