#pragma once
// The two references W1 is compared with, measured on the same MariaDB in the same run
// (Connector/C++, one connection per client thread, the same 1 KiB rows):
//   - the storage limit: multi-row INSERT into a bare table and DELETE by primary key,
//     with no queue logic at all;
//   - the naive queue a team would hand-roll (as in ../shared/bench/peers, adapter
//     mysql.js): one InnoDB table, SELECT ... ORDER BY priority, id LIMIT n FOR UPDATE
//     SKIP LOCKED, UPDATE the lease, COMMIT, DELETE on ack; REPEATABLE READ (the
//     default); a deadlock or lock wait is retried (up to 20 times) and counted.

#include <string>

#include "bench/workload.h"

namespace shardq::bench {

class MysqlReference {
 public:
  // `socket`: the MariaDB the shardq under test uses; tables go to database bench_ref.
  MysqlReference(std::string socket, W1 w1);

  // Raw INSERT of w1.items rows, w1.batch rows per statement, producers x lanes
  // connections; then DELETE of them all by primary key, w1.batch ids per statement.
  void Raw(Figures* out);
  // The naive queue: single-row and w1.batch-row enqueues from producers x lanes
  // connections, then a drain by w1.consumers consumers fetching w1.fetch at a time.
  void Naive(Figures* out);

 private:
  std::string socket_;
  W1 w1_;
};

// Drops shardq's databases (shardq_*) and bench_ref: every run starts empty.
void DropDatabases(const std::string& socket);

}  // namespace shardq::bench
