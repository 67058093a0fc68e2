// Clients that do not read what the server sends them. One that stops reading its
// socket (a stopped process, a dead link) must not stall anyone else. The server's answer
// to it cannot be written; gRPC then waits for the socket on a poller of its own (the TCP
// backup poller, on its default executor), and none of shardq's threads may be the one
// that waits: not a shard's I/O thread, which finished the Dequeue, nor the ticker. And
// one that keeps asking on a stream without reading the answers must not make the server
// hold them all. What the server leased into answers it never sent comes back at once.

#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <condition_variable>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "common/item.h"
#include "tests/e2e_support.h"

namespace shardq::testing {
namespace {

// A TCP proxy between one client connection and the server at `server_port`, which
// can stop reading what the server sends (Stall) as a stopped client would.
class StallableProxy {
 public:
  explicit StallableProxy(int server_port) : server_port_(server_port) {
    listener_ = socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in addr{
        .sin_family = AF_INET, .sin_port = 0, .sin_addr = {}, .sin_zero = {}};
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    EXPECT_EQ(bind(listener_, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0);
    EXPECT_EQ(listen(listener_, 1), 0);
    socklen_t len = sizeof(addr);
    EXPECT_EQ(getsockname(listener_, reinterpret_cast<sockaddr*>(&addr), &len), 0);
    port_ = ntohs(addr.sin_port);
    EXPECT_EQ(pipe(wake_), 0);
    thread_ = std::thread([this] { Run(); });
  }
  ~StallableProxy() {
    stop_ = true;
    Wake();
    if (thread_.joinable()) thread_.join();
    for (int fd : {listener_, client_, server_.load(), wake_[0], wake_[1]}) {
      if (fd >= 0) close(fd);
    }
  }
  int port() const { return port_; }
  void Stall() {
    stalled_ = true;
    Wake();
  }
  void Resume() {
    stalled_ = false;
    Wake();
  }
  // Resets both connections, as a client host that dies does, and stops.
  void Drop() {
    drop_ = true;
    Wake();
    thread_.join();
  }
  // Bytes the server sent that the proxy has not read (while stalled, its small
  // receive buffer fills first, then the server's send buffer).
  int HeldBack() const {
    int n = 0;
    const int fd = server_.load();
    if (fd >= 0) ioctl(fd, FIONREAD, &n);
    return n;
  }

 private:
  void Wake() { (void)!write(wake_[1], "x", 1); }

  void Run() {
    std::vector<char> buf(64 * 1024);
    while (!stop_) {
      std::vector<pollfd> fds = {{wake_[0], POLLIN, 0}};
      if (client_ < 0) fds.push_back({listener_, POLLIN, 0});
      if (client_ >= 0) fds.push_back({client_, POLLIN, 0});
      if (server_ >= 0 && !stalled_) fds.push_back({server_, POLLIN, 0});
      poll(fds.data(), fds.size(), -1);
      for (const pollfd& p : fds) {
        if (p.revents == 0) continue;
        if (p.fd == wake_[0]) {
          (void)!read(wake_[0], buf.data(), buf.size());
          if (drop_) return Reset();
        } else if (p.fd == listener_) {
          Connect();
        } else {
          const bool from_client = p.fd == client_;
          const ssize_t n = read(p.fd, buf.data(), buf.size());
          if (n <= 0) return;  // either side closed: the proxy is done
          WriteAll(from_client ? server_.load() : client_, buf.data(), n);
        }
      }
    }
  }

  void Reset() {
    const linger abort{.l_onoff = 1, .l_linger = 0};  // close with RST, not FIN
    for (int fd : {client_, server_.load()}) {
      if (fd < 0) continue;
      setsockopt(fd, SOL_SOCKET, SO_LINGER, &abort, sizeof(abort));
      close(fd);
    }
    client_ = -1;
    server_ = -1;
  }

  void Connect() {
    client_ = accept(listener_, nullptr, nullptr);
    const int fd = socket(AF_INET, SOCK_STREAM, 0);
    // A small receive buffer, so that a stall fills the server's socket soon.
    int small = 4096;
    setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &small, sizeof(small));
    sockaddr_in addr{.sin_family = AF_INET,
                     .sin_port = htons(static_cast<uint16_t>(server_port_)),
                     .sin_addr = {},
                     .sin_zero = {}};
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    EXPECT_EQ(connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0);
    server_ = fd;
  }

  static void WriteAll(int fd, const char* data, ssize_t n) {
    while (n > 0) {
      // MSG_NOSIGNAL: a peer already gone must not SIGPIPE the test.
      const ssize_t w = send(fd, data, n, MSG_NOSIGNAL);
      if (w <= 0) return;
      data += w;
      n -= w;
    }
  }

  const int server_port_;
  int port_ = 0;
  int listener_ = -1, client_ = -1;
  std::atomic<int> server_{-1};  // HeldBack reads it from the test's thread
  int wake_[2] = {-1, -1};
  std::atomic<bool> stalled_{false}, stop_{false}, drop_{false};
  std::thread thread_;
};

constexpr char kNs[] = "stall";
constexpr int kBigItems = 1000;  // one Dequeue's most: about 10 MB of payload

// `n` (a multiple of 100) items of the largest payload on `topic`, spread evenly over
// the server's `shards` (one Dequeue takes at most a window, 512, from a shard).
void EnqueueBig(QueueClient& client, FakeClock& clock, size_t shards,
                const std::string& topic = "big", int n = kBigItems) {
  for (int batch = 0; batch < n / 100; ++batch) {
    AdvanceToSlotOf(clock, kNs, static_cast<size_t>(batch) % shards, shards);
    v1::EnqueueRequest req;
    req.set_namespace_(kNs);
    for (int i = 0; i < 100; ++i) {
      v1::EnqueueItem* item = req.add_items();
      item->set_topic(topic);
      item->set_payload(std::string(kMaxPayloadBytes, 'p'));
    }
    v1::EnqueueResponse resp;
    grpc::ClientContext ctx;
    SetDeadline(ctx);
    ASSERT_TRUE(client.stub().Enqueue(&ctx, req, &resp).ok());
    for (const auto& r : resp.results()) ASSERT_EQ(r.status().code(), 0);
  }
}

// How many items of `topic` are leased now (GetActiveTopics).
uint64_t Leased(QueueClient& client, const std::string& topic) {
  v1::GetActiveTopicsRequest req;
  req.set_namespace_(kNs);
  v1::GetActiveTopicsResponse resp;
  grpc::ClientContext ctx;
  SetDeadline(ctx);
  EXPECT_TRUE(client.stub().GetActiveTopics(&ctx, req, &resp).ok());
  for (const auto& t : resp.topics()) {
    if (t.topic() == topic) return t.leased();
  }
  return 0;
}

// Whether the task's history says a lease of it was given back.
bool GivenBack(QueueClient& client, const std::string& id) {
  const v1::Task task = client.GetTask(id);
  for (const auto& e : task.history()) {
    if (e.kind() == "undelivered") return true;
  }
  return false;
}

v1::ConsumeStreamRequest DequeueCall(uint64_t id, int count) {
  v1::ConsumeStreamRequest call;
  call.set_call_id(id);
  v1::DequeueRequest* d = call.mutable_dequeue();
  d->set_namespace_(kNs);
  v1::TopicRequest* t = d->add_topics();
  t->set_topic("big");
  t->set_count(count);
  return call;
}

class StalledClientTest : public LiveServerTest {
 protected:
  // Everyone else goes on: every shard enqueues, leases and acks, and the ticker
  // answers a long poll at its deadline.
  void OthersGoOn() {
    const size_t shards = server_->engine().shard_count();
    for (int i = 0; i < 20; ++i) {
      // Every shard enqueues, whichever I/O thread the stalled answer could hold.
      AdvanceToSlotOf(clock_, kNs, static_cast<size_t>(i) % shards, shards);
      ASSERT_TRUE(client_->EnqueueOne(kNs, "small", i % 10).ok());
    }
    std::set<std::string> acked;
    for (const auto& item : client_->Dequeue(kNs, "small", 20)) {
      EXPECT_EQ(client_->Ack(item.id(), item.lease_token()), grpc::StatusCode::OK);
      acked.insert(item.id());
    }
    EXPECT_EQ(acked.size(), 20u);
    grpc::Status status;
    std::thread long_poll([&] { client_->Dequeue(kNs, "small", 1, 50, &status); });
    EXPECT_TRUE(Eventually([&] { return server_->engine().ParkedCalls() == 1; }));
    clock_.Advance(Duration(50));
    long_poll.join();
    EXPECT_TRUE(status.ok()) << status.error_message();
  }
};

TEST_F(StalledClientTest, AClientThatStopsReadingStallsNobodyElse) {
  EnqueueBig(*client_, clock_, server_->engine().shard_count());
  EnqueueBig(*client_, clock_, server_->engine().shard_count(), "warm", 900);
  StallableProxy proxy(server_->port());
  QueueClient stalled(proxy.port());
  // Big answers while the link is good let HTTP/2's window grow (BDP probing) to
  // megabytes, as on any busy connection.
  for (int round = 0; round < 3; ++round) {
    const auto warm = stalled.Dequeue(kNs, "warm", 300);
    ASSERT_EQ(warm.size(), 300u);
    for (const auto& item : warm) {
      ASSERT_EQ(stalled.Ack(item.id(), item.lease_token()), grpc::StatusCode::OK);
    }
  }

  proxy.Stall();
  std::vector<v1::DequeuedItem> got;
  grpc::Status got_status;
  std::atomic<bool> answered{false};
  std::thread dequeue([&] {
    got = stalled.Dequeue(kNs, "big", kBigItems, 0, &got_status);
    answered = true;
  });
  // Wait (bounded) until the server writes the answer. It is 10 MB, and the window
  // lets megabytes through: more than the server's socket buffer (about 3 MB here)
  // and the proxy's (4 kB) hold, so the server's socket fills. (With gRPC's default
  // executor off, the write that finds it full would hold a shard's I/O thread, and
  // OthersGoOn fails: the thirteenth round in docs/BENCHMARKS.md.)
  EXPECT_TRUE(Eventually([&] { return proxy.HeldBack() > 0; }))
      << "the server never wrote the answer";
  OthersGoOn();
  EXPECT_FALSE(answered) << "the answer got through the stalled link";

  // The link comes back: the stalled answer arrives whole.
  proxy.Resume();
  dequeue.join();
  EXPECT_TRUE(got_status.ok()) << got_status.error_message();
  EXPECT_EQ(got.size(), static_cast<size_t>(kBigItems));
}

// A ConsumeStream client that sends its calls one after another without waiting for
// their answers, and reads whatever comes; OnDone tells how its stream ended.
class CallsInFlight : public grpc::ClientBidiReactor<v1::ConsumeStreamRequest,
                                                     v1::ConsumeStreamResponse> {
 public:
  CallsInFlight(v1::Queue::Stub& stub, std::vector<v1::ConsumeStreamRequest> calls)
      : calls_(std::move(calls)) {
    SetDeadline(context_);
    stub.async()->ConsumeStream(&context_, this);
    StartWrite(&calls_[0]);
    StartRead(&answer_);
    StartCall();
  }
  ~CallsInFlight() {
    context_.TryCancel();  // a test that failed early: OnDone must come before we go
    AwaitEnd();
  }
  void OnWriteDone(bool ok) override {
    if (ok && ++next_ < calls_.size()) StartWrite(&calls_[next_]);
  }
  void OnReadDone(bool ok) override {
    if (ok) StartRead(&answer_);
  }
  void OnDone(const grpc::Status& status) override {
    std::lock_guard lock(mu_);
    status_ = status;
    cv_.notify_all();
  }
  // How the stream ended (bounded by its deadline).
  grpc::Status AwaitEnd() {
    std::unique_lock lock(mu_);
    cv_.wait(lock, [&] { return status_.has_value(); });
    return *status_;
  }

 private:
  grpc::ClientContext context_;
  std::vector<v1::ConsumeStreamRequest> calls_;
  size_t next_ = 0;                   // OnWriteDone runs one at a time
  v1::ConsumeStreamResponse answer_;  // OnReadDone too
  std::mutex mu_;
  std::condition_variable cv_;
  std::optional<grpc::Status> status_;
};

// A server that lets 1 MiB of a stream's answers wait unread: one Dequeue answer of
// 100 big items is about 1 MB.
class UnreadAnswersTest : public LiveServerTest {
 protected:
  frontend::Limits ServerLimits() const override {
    frontend::Limits limits;
    limits.max_unread_stream_bytes = 1 << 20;
    return limits;
  }
};

TEST_F(UnreadAnswersTest, AStreamWhoseClientDoesNotReadIsCancelledAndItsItemsComeBack) {
  EnqueueBig(*client_, clock_, server_->engine().shard_count());
  StallableProxy proxy(server_->port());
  QueueClient stalled(proxy.port());
  ASSERT_TRUE(stalled.EnqueueOne(kNs, "warm-up").ok()) << "the proxy connects";
  proxy.Stall();
  std::vector<v1::ConsumeStreamRequest> calls;
  for (uint64_t id = 1; id <= kBigItems / 100; ++id) {
    calls.push_back(DequeueCall(id, 100));
  }
  CallsInFlight stream(stalled.stub(), std::move(calls));
  // The first answer waits for the client's HTTP/2 window, the next ones behind it;
  // past 1 MiB the server cancels the stream, where it would have held all 10 MB.
  EXPECT_TRUE(Eventually([&] { return server_->service().StreamsCut() == 1; }));
  proxy.Resume();
  const grpc::Status end = stream.AwaitEnd();
  EXPECT_EQ(end.error_code(), grpc::StatusCode::CANCELLED) << end.error_message();

  // What the dropped answers leased is given back at once (the clock does not move).
  // At the cut more than 1 MiB waited behind the answer being written: at least two
  // answers of 100 items. Answers written before it (into the sockets, which hold
  // some) and the one being written are not given back: their bytes may have reached
  // the client. (A claim still in flight at the cut lands for a cancelled call: the
  // engine gives its items back itself, uncounted by the service, so more items may
  // come back at once than the service counts.)
  std::set<std::string> back;
  auto take = [&] {
    for (const auto& item : client_->Dequeue(kNs, "big", kBigItems)) {
      back.insert(item.id());
    }
  };
  // Each item's history is read once: an item is dequeued here only after the
  // transaction that gave it back, which wrote its "undelivered" event.
  std::set<std::string> checked;
  size_t came = 0;
  auto given_back_came = [&] {
    for (const std::string& id : back) {
      if (checked.insert(id).second) came += GivenBack(*client_, id);
    }
    return came;
  };
  EXPECT_TRUE(Eventually([&] {
    take();
    const uint64_t given_back = server_->service().LeasesGivenBack();
    return given_back >= 200 && given_back_came() >= given_back;
  })) << given_back_came()
      << " came back at once; the service gave back "
      << server_->service().LeasesGivenBack();
  EXPECT_LT(back.size(), static_cast<size_t>(kBigItems));
  // The others come back when their leases run out.
  clock_.Advance(ServerLimits().default_lease + Duration(1));
  EXPECT_TRUE(Eventually([&] {
    take();
    return back.size() == static_cast<size_t>(kBigItems);
  })) << back.size()
      << " of " << kBigItems << " items came back";
}

TEST_F(UnreadAnswersTest,
       ADequeueWhoseClientDiesBeforeItsAnswerIsSentGivesTheLeasesBack) {
  EnqueueBig(*client_, clock_, server_->engine().shard_count());
  StallableProxy proxy(server_->port());
  QueueClient stalled(proxy.port());
  // An answer that reaches its client keeps its leases.
  ASSERT_TRUE(stalled.EnqueueOne(kNs, "small").ok());
  ASSERT_EQ(stalled.Dequeue(kNs, "small", 1).size(), 1u);
  EXPECT_EQ(server_->service().LeasesGivenBack(), 0u);

  proxy.Stall();
  const v1::DequeueRequest req = DequeueCall(0, kBigItems).dequeue();
  v1::DequeueResponse resp;
  grpc::ClientContext ctx;
  SetDeadline(ctx);
  std::mutex mu;
  std::condition_variable cv;
  std::optional<grpc::Status> status;
  stalled.stub().async()->Dequeue(&ctx, &req, &resp, [&](grpc::Status s) {
    std::lock_guard lock(mu);
    status = s;
    cv.notify_all();
  });
  // The server leased them all and is writing the 10 MB answer, which the stalled
  // link holds back, so the call's status is not sent yet. Then the client's host
  // dies: both connections are reset.
  EXPECT_TRUE(Eventually([&] {
    return Leased(*client_, "big") == static_cast<uint64_t>(kBigItems) &&
           proxy.HeldBack() > 0;
  })) << "the server never wrote the answer";
  proxy.Drop();
  {
    std::unique_lock lock(mu);
    cv.wait(lock, [&] { return status.has_value(); });
  }
  EXPECT_EQ(status->error_code(), grpc::StatusCode::UNAVAILABLE);
  // Its items are ready again at once, without waiting out their leases.
  EXPECT_TRUE(Eventually([&] {
    return server_->service().LeasesGivenBack() == static_cast<size_t>(kBigItems);
  }));
  std::set<std::string> back;
  EXPECT_TRUE(Eventually([&] {
    for (const auto& item : client_->Dequeue(kNs, "big", kBigItems)) {
      back.insert(item.id());
    }
    return back.size() == static_cast<size_t>(kBigItems);
  })) << back.size()
      << " of " << kBigItems << " items came back";
  EXPECT_TRUE(GivenBack(*client_, *back.begin()));
}

TEST_F(UnreadAnswersTest, AClientThatReadsGetsAnswersLargerThanTheLimit) {
  EnqueueBig(*client_, clock_, server_->engine().shard_count());
  grpc::ClientContext ctx;
  SetDeadline(ctx);
  auto stream = client_->stub().ConsumeStream(&ctx);
  v1::ConsumeStreamResponse answer;
  for (uint64_t id = 1; id <= 3; ++id) {
    // 300 items, about 3 MB: one answer alone never ends a stream.
    ASSERT_TRUE(stream->Write(DequeueCall(id, 300)));
    ASSERT_TRUE(stream->Read(&answer));
    EXPECT_EQ(answer.dequeue().items_size(), 300);
  }
  ASSERT_TRUE(stream->WritesDone());
  EXPECT_FALSE(stream->Read(&answer));
  const grpc::Status status = stream->Finish();
  EXPECT_TRUE(status.ok()) << status.error_message();
}

}  // namespace
}  // namespace shardq::testing
