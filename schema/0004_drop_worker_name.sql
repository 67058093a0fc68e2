-- Migration 4: drop items.worker_id, replaced by items.worker (migration 3). A separate
-- migration so that each is idempotent: migration 3 reads the column, and a crash
-- between this DROP and its record in schema_migrations re-runs only this.
ALTER TABLE items DROP COLUMN IF EXISTS worker_id;
