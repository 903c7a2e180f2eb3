-- The version of a policy, raised by every change an operator makes (PATCH, suspend, resume,
-- delete). A change is written only if the version it read is still current, so two admin
-- changes racing each other cannot undo one another (a PATCH racing a suspend once put the
-- policy back to ACTIVE); the loser is told 409 POLICY_CHANGED and may read and retry.
ALTER TABLE coupons ADD COLUMN version BIGINT NOT NULL DEFAULT 1;
