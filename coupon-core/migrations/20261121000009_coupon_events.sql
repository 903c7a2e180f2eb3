-- Transactional outbox of coupon events: each state change writes its event in the same
-- transaction; the relay in coupon-consumer publishes unpublished rows to the events topic and
-- stamps published_at. event_id is unique, so an event recorded twice (a redelivered issue
-- message) is stored once.
CREATE TABLE IF NOT EXISTS coupon_events (
    id              BIGINT      NOT NULL AUTO_INCREMENT,
    event_id        CHAR(36)    CHARACTER SET ascii NOT NULL,
    event_type      VARCHAR(16) NOT NULL,
    coupon_issue_id BIGINT      NOT NULL,
    payload         TEXT        NOT NULL,
    created_at      DATETIME(6) NOT NULL,
    published_at    DATETIME(6) NULL,
    PRIMARY KEY (id),
    UNIQUE KEY uk_coupon_events_event_id (event_id),
    KEY idx_coupon_events_unpublished (published_at, id)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4;
