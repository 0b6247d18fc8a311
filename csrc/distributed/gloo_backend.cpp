// The c10d transport: a TCPStore for the rendezvous (env://, or torchrun's agent store) and
// ProcessGroupGloo for the collectives. Built only when the gloo headers are found (CMake
// ARWRAP_WITH_DISTRIBUTED); the symbols themselves come from libtorch_cpu.
#include "backend.h"

#include <torch/csrc/distributed/c10d/PrefixStore.hpp>
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>

#include <netdb.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <thread>

namespace arwrap::distributed {

bool transport_available() { return true; }

namespace {

std::string first_line(const std::exception& e) {
  std::string m;
  if (const auto* ce = dynamic_cast<const c10::Error*>(&e)) m = ce->what_without_backtrace();
  else m = e.what();
  return m.substr(0, m.find('\n'));
}

struct GlooWork final : Work::Impl {
  c10::intrusive_ptr<c10d::Work> work;
  std::string what, where;
  void wait() override {
    try {
      work->wait();
    } catch (const std::exception& e) {
      TORCH_CHECK(false, "arwrap::distributed: ", what, " failed on ", where, ": ", first_line(e));
    }
  }
};

struct GlooGroup final : ProcessGroup::Impl {
  c10::intrusive_ptr<c10d::Store> store;
  c10::intrusive_ptr<c10d::ProcessGroupGloo> pg;

  std::string where() const {
    return "rank " + std::to_string(rank) + " of " + std::to_string(world_size) +
           " (a rank died, hung or left; the timeout is " + seconds_text(timeout) + ")";
  }
  std::shared_ptr<Work::Impl> wrap(c10::intrusive_ptr<c10d::Work> w, const std::string& what) {
    auto out = std::make_shared<GlooWork>();
    out->work = std::move(w);
    out->what = what;
    out->where = where();
    return out;
  }
  template <class F>
  std::shared_ptr<Work::Impl> start(const std::string& what, F&& f) {
    try {
      return wrap(f(), what);
    } catch (const std::exception& e) {
      TORCH_CHECK(false, "arwrap::distributed: ", what, " failed on ", where(), ": ", first_line(e));
    }
  }
  std::shared_ptr<Work::Impl> all_reduce(const at::Tensor& t, ReduceKind kind, const std::string& what) override {
    return start(what, [&] {
      std::vector<at::Tensor> v{t};
      c10d::AllreduceOptions o;
      o.reduceOp = kind == ReduceKind::Sum ? c10d::ReduceOp::SUM : c10d::ReduceOp::MAX;
      return pg->allreduce(v, o);
    });
  }
  std::shared_ptr<Work::Impl> broadcast(const at::Tensor& t, int root, const std::string& what) override {
    return start(what, [&] {
      std::vector<at::Tensor> v{t};
      c10d::BroadcastOptions o;
      o.rootRank = root;
      return pg->broadcast(v, o);
    });
  }
  std::shared_ptr<Work::Impl> barrier(const std::string& what) override {
    return start(what, [&] { return pg->barrier(c10d::BarrierOptions()); });
  }
};

// Waits until a TCP connection to host:port succeeds, trying every half second, and returns false
// at the deadline. (TCPStore's own connect loop sleeps a random back-off that can overshoot the
// timeout by seconds; this keeps an unreachable MASTER_ADDR within it.) `why` gets the last error.
bool wait_for_listener(const std::string& host, int port, std::chrono::steady_clock::time_point deadline,
                       std::string* why) {
  using clock = std::chrono::steady_clock;
  for (;;) {
    addrinfo hints{}, *res = nullptr;
    hints.ai_socktype = SOCK_STREAM;
    const int rc = ::getaddrinfo(host.c_str(), std::to_string(port).c_str(), &hints, &res);
    if (rc != 0) {
      *why = std::string("cannot resolve the address: ") + ::gai_strerror(rc);
    } else {
      for (addrinfo* a = res; a != nullptr; a = a->ai_next) {
        const int fd = ::socket(a->ai_family, a->ai_socktype | SOCK_NONBLOCK, a->ai_protocol);
        if (fd < 0) continue;
        int err = ::connect(fd, a->ai_addr, a->ai_addrlen) == 0 ? 0 : errno;
        if (err == EINPROGRESS) {
          const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - clock::now()).count();
          pollfd p{fd, POLLOUT, 0};
          const int n = ::poll(&p, 1, static_cast<int>(std::clamp<int64_t>(left, 0, 1000)));
          socklen_t len = sizeof err;
          if (n == 1) ::getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len);
          else err = ETIMEDOUT;
        }
        ::close(fd);
        if (err == 0) {
          ::freeaddrinfo(res);
          return true;
        }
        *why = std::string("connect: ") + std::strerror(err);
      }
      ::freeaddrinfo(res);
    }
    const auto now = clock::now();
    if (now >= deadline) return false;
    std::this_thread::sleep_for(std::min<clock::duration>(std::chrono::milliseconds(500), deadline - now));
  }
}

bool is_loopback(const std::string& addr) {
  return addr == "localhost" || addr.rfind("127.", 0) == 0 || addr == "::1";
}

}  // namespace

std::shared_ptr<ProcessGroup::Impl> connect(const EnvConfig& env, const InitOptions& options) {
  auto g = std::make_shared<GlooGroup>();
  g->rank = env.rank;
  g->world_size = env.world_size;
  g->backend = "gloo";
  g->timeout = options.timeout;
  const std::string at = "MASTER_ADDR=" + env.master_addr + " MASTER_PORT=" + std::to_string(env.master_port);
  const std::string me = "rank " + std::to_string(env.rank) + " of " + std::to_string(env.world_size);

  // 1. the store: torchrun's agent hosts it (every rank a client), else rank 0 hosts it
  const auto deadline = std::chrono::steady_clock::now() + options.timeout;
  const bool server = !env.agent_store && env.rank == 0;
  if (std::string why; !server && !wait_for_listener(env.master_addr, env.master_port, deadline, &why))
    TORCH_CHECK(false, "arwrap::distributed: ", me, " cannot reach the rendezvous store at ", at, " within ",
                seconds_text(options.timeout), " (is rank 0 or torchrun running there, the address right and the port ",
                "open?): ", why);
  c10::intrusive_ptr<c10d::Store> tcp;
  try {
    c10d::TCPStoreOptions so;
    so.port = static_cast<std::uint16_t>(env.master_port);
    so.isServer = server;
    so.numWorkers = static_cast<std::size_t>(env.world_size);
    so.waitWorkers = false;  // step 2 waits, with a message that says who is missing
    so.timeout = options.timeout;
    tcp = c10::make_intrusive<c10d::TCPStore>(env.master_addr, so);
  } catch (const std::exception& e) {
    TORCH_CHECK(false, "arwrap::distributed: ", me, " cannot ",
                server ? "host" : "reach",
                " the rendezvous store at ", at, " within ", seconds_text(options.timeout),
                " (is rank 0 or torchrun running there, the address right and the port open?): ", first_line(e));
  }
  // the same key space as torch's env:// rendezvous under torchrun: one per restart attempt
  g->store = c10::make_intrusive<c10d::PrefixStore>(
      "/arwrap/attempt_" + std::to_string(env.restart_count), tcp);

  // 2. every rank checks in, then waits for all: a missing rank is named by count, within the timeout
  try {
    g->store->set("rank_" + std::to_string(env.rank), std::vector<uint8_t>{1});
    const int64_t joined = g->store->add("joined", 1);
    (void)joined;
    std::vector<std::string> keys;
    for (int r = 0; r < env.world_size; ++r) keys.push_back("rank_" + std::to_string(r));
    g->store->wait(keys, options.timeout);
  } catch (const std::exception& e) {
    int64_t joined = -1;
    std::string missing;
    try {
      joined = g->store->add("joined", 0);
      for (int r = 0; r < env.world_size && missing.size() < 60; ++r)
        if (!g->store->check({"rank_" + std::to_string(r)})) missing += (missing.empty() ? "" : ",") + std::to_string(r);
    } catch (...) {
    }
    TORCH_CHECK(false, "arwrap::distributed: ", me, ": only ", joined < 0 ? std::string("some") : std::to_string(joined),
                " of WORLD_SIZE=", env.world_size, " ranks joined at ", at, " within ", seconds_text(options.timeout),
                missing.empty() ? std::string() : " (missing ranks: " + missing + ")", ": ", first_line(e));
  }

  // 3. the Gloo group over that store
  try {
    auto o = c10d::ProcessGroupGloo::Options::create(options.timeout);
    if (const char* ifname = std::getenv("GLOO_SOCKET_IFNAME"); ifname && *ifname)
      o->devices.push_back(c10d::ProcessGroupGloo::createDeviceForInterface(ifname));
    else if (is_loopback(env.master_addr))
      o->devices.push_back(c10d::ProcessGroupGloo::createDeviceForHostname("127.0.0.1"));
    else
      o->devices.push_back(c10d::ProcessGroupGloo::createDefaultDevice());
    g->pg = c10::make_intrusive<c10d::ProcessGroupGloo>(
        c10::make_intrusive<c10d::PrefixStore>("gloo", g->store), env.rank, env.world_size, o);
  } catch (const std::exception& e) {
    TORCH_CHECK(false, "arwrap::distributed: ", me, ": setting up Gloo at ", at, " failed within ",
                seconds_text(options.timeout), " (set GLOO_SOCKET_IFNAME to the network interface between the machines): ",
                first_line(e));
  }
  return g;
}

}  // namespace arwrap::distributed
