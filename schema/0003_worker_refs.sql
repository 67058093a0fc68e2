-- Migration 3: the lessee's name moves out of the item row.
--
-- A claim used to write items.worker_id, a VARBINARY that grows the row from '' to the
-- worker's name. A row that changes length cannot be updated in place: InnoDB deletes
-- and re-inserts it in its page and, on pages packed by the enqueues, reorganises the
-- whole 16 KiB page -- that made a claim cost about 2.4x an in-place update
-- (docs/BENCHMARKS.md). Now the row holds a fixed-size reference into `workers`.
--
-- workers: one row per distinct worker name seen by this shard; written by the shard's
-- owner (store/mysql_store.cc) in a transaction of its own before the first claim
-- that uses the name, and never changed or deleted (ids are cached in memory).
CREATE TABLE IF NOT EXISTS workers (
  id   INT UNSIGNED   NOT NULL AUTO_INCREMENT,
  name VARBINARY(128) NOT NULL,
  PRIMARY KEY (id),
  UNIQUE KEY name (name)
) ENGINE=InnoDB;

ALTER TABLE items
  ADD COLUMN IF NOT EXISTS worker INT UNSIGNED NOT NULL DEFAULT 0 COMMENT 'workers.id of the last lessee; 0 = none';

-- Existing rows keep their lessee (idempotent: a re-run after a crash redoes the same).
INSERT IGNORE INTO workers (name) SELECT DISTINCT worker_id FROM items WHERE worker_id <> '';

UPDATE items JOIN workers ON workers.name = items.worker_id SET items.worker = workers.id
  WHERE items.worker = 0;
