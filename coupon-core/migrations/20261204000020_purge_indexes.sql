-- Indexes the purge in coupon-consumer walks (coupon-core/src/purge.rs), so each batch reads
-- only the rows it deletes, oldest first: finished reconciliation jobs by finish time (a RUNNING
-- job has none), finished code generation jobs by status and last change. idempotency_keys
-- (expires_at) and coupon_events (published_at, id) have theirs already.
ALTER TABLE reconciliation_jobs
    ADD KEY idx_reconciliation_jobs_finished (finished_at);
ALTER TABLE code_generation_jobs
    ADD KEY idx_code_generation_jobs_finished (status, updated_at);
