#include "frontend/grpc_threads.h"

#include <dlfcn.h>
#include <grpc/grpc.h>
#include <spdlog/spdlog.h>

namespace shardq::frontend {
namespace {

// The mangled name of the static member function
// `void grpc_core::Executor::SetThreadingDefault(bool)`.
constexpr char kSetThreadingDefault[] = "_ZN9grpc_core8Executor19SetThreadingDefaultEb";

bool TurnOff() {
  using SetThreading = void (*)(bool);
  auto* set = reinterpret_cast<SetThreading>(dlsym(RTLD_DEFAULT, kSetThreadingDefault));
  if (set == nullptr) {
    spdlog::info("gRPC's default executor stays on ({} not found)", kSetThreadingDefault);
    return false;
  }
  grpc_init();  // never released: see the header
  set(false);
  return true;
}

}  // namespace

bool TurnOffGrpcDefaultExecutor() {
  static const bool turned_off = TurnOff();  // once per process, thread-safe
  return turned_off;
}

}  // namespace shardq::frontend
