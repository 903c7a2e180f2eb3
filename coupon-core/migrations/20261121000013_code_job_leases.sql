-- Code generation jobs survive the API process that runs them: a job is leased by one instance
-- (lease_owner until lease_until), its progress is committed with each batch of codes, and any
-- instance resumes a RUNNING job whose lease has run out.
ALTER TABLE code_generation_jobs
    ADD COLUMN lease_owner CHAR(36) CHARACTER SET ascii NULL,
    ADD COLUMN lease_until DATETIME(6) NULL,
    ADD KEY idx_code_generation_jobs_lease (status, lease_until);
