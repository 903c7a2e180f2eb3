-- Idempotency keys of state-changing requests: the first request with a key acts and stores its
-- response; repeats with the same fingerprint (method, path, body) get that response back.
CREATE TABLE IF NOT EXISTS idempotency_keys (
    idempotency_key VARCHAR(255) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    fingerprint     CHAR(64)     CHARACTER SET ascii NOT NULL,
    state           VARCHAR(16)  NOT NULL,
    response_status SMALLINT     NULL,
    response_body   MEDIUMBLOB   NULL,
    locked_until    DATETIME(6)  NOT NULL,
    created_at      DATETIME(6)  NOT NULL,
    expires_at      DATETIME(6)  NOT NULL,
    PRIMARY KEY (idempotency_key),
    KEY idx_idempotency_keys_expires (expires_at)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4;
