-- Reconciliation passes started through the admin API (POST /api/v1/admin/reconciliations):
-- any instance can report a job another started. A job whose instance died stays RUNNING;
-- a new pass is always safe to start.
CREATE TABLE reconciliation_jobs (
    id          BIGINT       NOT NULL AUTO_INCREMENT PRIMARY KEY,
    coupon_id   BIGINT       NULL,
    grace_ms    BIGINT       NOT NULL,
    dry_run     BOOLEAN      NOT NULL,
    status      VARCHAR(16)  NOT NULL,
    reports     LONGTEXT     NULL,
    error       TEXT         NULL,
    created_at  DATETIME(6)  NOT NULL,
    finished_at DATETIME(6)  NULL
) ENGINE = InnoDB;
