-- Archive of codes soft-deleted long ago (and of their redemption, which lives in the code row):
-- the archival job moves them here in batches so coupon_codes stays small.
ALTER TABLE coupon_codes ADD KEY idx_coupon_codes_deleted (status, deleted_at);

CREATE TABLE IF NOT EXISTS coupon_codes_archive (
    id              BIGINT      NOT NULL,
    code            CHAR(16)    CHARACTER SET ascii NOT NULL,
    topic_id        BIGINT      NOT NULL,
    status          VARCHAR(16) NOT NULL,
    redeemed_by     BIGINT      NULL,
    redeemed_at     DATETIME(6) NULL,
    coupon_issue_id BIGINT      NULL,
    created_at      DATETIME(6) NOT NULL,
    deleted_at      DATETIME(6) NULL,
    archived_at     DATETIME(6) NOT NULL,
    PRIMARY KEY (id),
    KEY idx_coupon_codes_archive_code (code),
    KEY idx_coupon_codes_archive_topic (topic_id, id)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4;
