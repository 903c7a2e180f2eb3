-- The user each order belongs to, written by the first redeem or reserve naming the order:
-- an order id used for one user's coupon cannot then redeem, hold or settle another user's
-- coupon (409 ORDER_OF_ANOTHER_USER), so a payment result or a cancellation for that order
-- reaches one user's coupons only.
CREATE TABLE coupon_orders (
    order_id   VARCHAR(64) NOT NULL PRIMARY KEY,
    user_id    BIGINT      NOT NULL,
    created_at DATETIME(6) NOT NULL
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4;
