-- Code coupons: a topic ties a policy to a set of 16-character codes; a code is redeemed once,
-- and a user redeems at most one code per topic (UNIQUE (topic_id, redeemed_by); NULLs do not
-- collide). The unique keys make a double use impossible whatever Redis holds.
CREATE TABLE IF NOT EXISTS coupon_topics (
    id          BIGINT       NOT NULL AUTO_INCREMENT,
    coupon_id   BIGINT       NOT NULL,
    name        VARCHAR(200) NOT NULL,
    created_at  DATETIME(6)  NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
    PRIMARY KEY (id),
    KEY idx_coupon_topics_coupon (coupon_id),
    CONSTRAINT fk_coupon_topics_coupon FOREIGN KEY (coupon_id) REFERENCES coupons (id)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4;

CREATE TABLE IF NOT EXISTS coupon_codes (
    id              BIGINT      NOT NULL AUTO_INCREMENT,
    code            CHAR(16)    CHARACTER SET ascii NOT NULL,
    topic_id        BIGINT      NOT NULL,
    status          VARCHAR(16) NOT NULL DEFAULT 'ACTIVE',
    redeemed_by     BIGINT      NULL,
    redeemed_at     DATETIME(6) NULL,
    coupon_issue_id BIGINT      NULL,
    created_at      DATETIME(6) NOT NULL,
    deleted_at      DATETIME(6) NULL,
    PRIMARY KEY (id),
    UNIQUE KEY uk_coupon_codes_code (code),
    UNIQUE KEY uk_coupon_codes_topic_user (topic_id, redeemed_by),
    KEY idx_coupon_codes_topic_status (topic_id, status, id),
    KEY idx_coupon_codes_topic_created (topic_id, created_at, id)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4;

CREATE TABLE IF NOT EXISTS code_generation_jobs (
    id          BIGINT      NOT NULL AUTO_INCREMENT,
    topic_id    BIGINT      NOT NULL,
    requested   BIGINT      NOT NULL,
    generated   BIGINT      NOT NULL DEFAULT 0,
    status      VARCHAR(16) NOT NULL DEFAULT 'RUNNING',
    created_at  DATETIME(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
    updated_at  DATETIME(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6) ON UPDATE CURRENT_TIMESTAMP(6),
    PRIMARY KEY (id),
    KEY idx_code_generation_jobs_topic (topic_id)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4;
