-- Migration 2: the task lifecycle (attempt limits, dead letters, results, history,
-- cancellation, dedup keys).
--
-- New states in items.state: 3 succeeded, 4 failed, 5 dead (dead letter),
-- 6 cancelled. These final rows are kept for the namespace's retention period;
-- their deliver_after is the time they will be purged, so the `due` index finds them.
-- Written, like everything in items, only by the shard's owner (shard_worker/ through
-- store/mysql_store.cc).
ALTER TABLE items
  ADD COLUMN IF NOT EXISTS task_type VARBINARY(64) NOT NULL DEFAULT '' COMMENT 'handler name',
  ADD COLUMN IF NOT EXISTS max_attempts INT UNSIGNED NOT NULL DEFAULT 5,
  ADD COLUMN IF NOT EXISTS dedup_key VARBINARY(128) NULL COMMENT 'idempotency key',
  ADD COLUMN IF NOT EXISTS worker_id VARBINARY(128) NOT NULL DEFAULT '' COMMENT 'last lessee',
  ADD COLUMN IF NOT EXISTS first_delivered_at BIGINT NOT NULL DEFAULT 0,
  ADD COLUMN IF NOT EXISTS last_delivered_at BIGINT NOT NULL DEFAULT 0,
  ADD COLUMN IF NOT EXISTS finished_at BIGINT NOT NULL DEFAULT 0,
  ADD COLUMN IF NOT EXISTS last_error VARBINARY(4096) NOT NULL DEFAULT '',
  ADD COLUMN IF NOT EXISTS result BLOB NULL COMMENT 'what the handler reported on ack',
  ADD COLUMN IF NOT EXISTS cancel_requested TINYINT UNSIGNED NOT NULL DEFAULT 0,
  -- One live item per (namespace, key) in a shard; keys are routed to a shard by hash,
  -- so this is one per namespace. NULL keys never collide.
  ADD UNIQUE KEY IF NOT EXISTS dedup (ns, dedup_key);

-- task_events: each item's history, appended in the same transaction as the change
-- it records (nack, lease expiry, cancel, redrive) by the shard's owner; deleted with
-- the item when it is purged. A delivery's "leased" event and "succeeded" are kept in
-- the items row (attempts, last_delivered_at, worker_id, finished_at) and written here
-- only when the lease ends otherwise (store/mysql_store.cc, LeaseEventsToWrite).
CREATE TABLE IF NOT EXISTS task_events (
  item_id  BIGINT UNSIGNED NOT NULL,
  seq      BIGINT UNSIGNED NOT NULL AUTO_INCREMENT,
  at_ms    BIGINT          NOT NULL,
  kind     VARBINARY(32)   NOT NULL,
  attempt  INT UNSIGNED    NOT NULL,
  worker_id VARBINARY(128) NOT NULL DEFAULT '',
  detail   VARBINARY(4096) NOT NULL DEFAULT '',
  PRIMARY KEY (item_id, seq),
  KEY seq (seq)
) ENGINE=InnoDB;
