// Example producer: enqueues --count tasks of type "greet" to a topic, in one batch,
// and prints their ids. Copy it and change the payload.
//
//   example_producer --server 127.0.0.1:50051 --namespace demo --topic hello --count 10
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "shardq/sdk.h"

int main(int argc, char** argv) {
  std::string server = "127.0.0.1:50051", ns = "demo", topic = "hello";
  int count = 10;
  if (argc % 2 == 0) {  // flags come with values
    std::fprintf(stderr, "usage: %s [--server|--namespace|--topic|--count VALUE]...\n",
                 argv[0]);
    return 2;
  }
  for (int i = 1; i + 1 < argc; i += 2) {
    std::string flag = argv[i], value = argv[i + 1];
    if (flag == "--server")
      server = value;
    else if (flag == "--namespace")
      ns = value;
    else if (flag == "--topic")
      topic = value;
    else if (flag == "--count")
      count = std::atoi(value.c_str());
    else {
      std::fprintf(stderr, "unknown flag %s\n", flag.c_str());
      return 2;
    }
  }

  if (count < 1 || count > 1000) {  // atoi: 0 for what is not a number
    std::fprintf(stderr, "--count must be 1..1000 (one batch)\n");
    return 2;
  }

  shardq::sdk::ProducerOptions options;
  options.connection.server = server;
  options.ns = ns;
  shardq::sdk::Producer producer(options);  // retries UNAVAILABLE, deduplicated

  std::vector<shardq::sdk::NewTask> tasks;
  for (int i = 0; i < count; ++i) {
    tasks.push_back({.topic = topic,
                     .payload = "world #" + std::to_string(i),
                     .task_type = "greet",
                     .priority = i % 3});
  }
  int failed = 0;
  for (const auto& r : producer.EnqueueBatch(tasks)) {
    if (r.ok()) {
      std::printf("enqueued %s\n", r.id.c_str());
    } else {
      std::fprintf(stderr, "failed: %s\n", r.status.error_message().c_str());
      ++failed;
    }
  }
  return failed == 0 ? 0 : 1;
}
