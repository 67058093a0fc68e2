-- Migration 1: the queue itself.
--
-- items: one row per live item of this shard. Written only by the shard's owner
-- process (shard_worker/, through store/mysql_store.cc): INSERT on enqueue; UPDATE on
-- lease (claim), nack, lease extension and promotion of due items; DELETE on ack and
-- TTL purge. Read by the same owner to refill its prefetch windows.
--
-- deliver_after is the one time column that drives the lifecycle (unix ms):
--   state 0 DELAYED: the time the item becomes READY;
--   state 1 READY:   the time it became due (second key of the ordering rule);
--   state 2 LEASED:  the lease deadline, after which it is READY again.
CREATE TABLE IF NOT EXISTS items (
  id            BIGINT UNSIGNED  NOT NULL AUTO_INCREMENT,
  ns            VARBINARY(64)    NOT NULL,
  topic         VARBINARY(128)   NOT NULL,
  priority      INT              NOT NULL COMMENT 'lower = sooner',
  state         TINYINT UNSIGNED NOT NULL COMMENT '0 delayed, 1 ready, 2 leased',
  deliver_after BIGINT           NOT NULL COMMENT 'unix ms, see above',
  lease_ms      INT UNSIGNED     NOT NULL COMMENT 'lease duration given at enqueue',
  lease_token   BIGINT UNSIGNED  NOT NULL DEFAULT 0 COMMENT 'token of the last lease',
  attempts      INT UNSIGNED     NOT NULL DEFAULT 0 COMMENT 'deliveries so far',
  enqueued_at   BIGINT           NOT NULL COMMENT 'unix ms',
  expires_at    BIGINT           NULL     COMMENT 'unix ms TTL; NULL = never',
  payload       BLOB             NOT NULL COMMENT 'immutable, <= 10 KiB',
  metadata      BLOB             NOT NULL COMMENT 'mutable by nack',
  PRIMARY KEY (id),
  -- Refill of a prefetch window: an exact prefix (ns, topic, state=1) read in the
  -- ordering rule's order (common/ordering.h), so LIMIT n reads n index entries.
  KEY ready_order (ns, topic, state, priority, deliver_after, id),
  -- Promotion of due items (delayed -> ready, expired lease -> ready).
  KEY due (state, deliver_after),
  -- TTL purge.
  KEY expiry (expires_at)
) ENGINE=InnoDB;
