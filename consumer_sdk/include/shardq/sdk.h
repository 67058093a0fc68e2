#pragma once
// The shardq client SDK in one include: Producer (enqueue) and Worker (consume).
// See consumer_sdk/README.md.

#include "shardq/backoff.h"     // IWYU pragma: export
#include "shardq/clock.h"       // IWYU pragma: export
#include "shardq/connection.h"  // IWYU pragma: export
#include "shardq/producer.h"    // IWYU pragma: export
#include "shardq/worker.h"      // IWYU pragma: export
