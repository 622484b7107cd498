// RunTeam (see team_ort.h): the glue between ORT's pool and TeamParallel.
#include "team_ort.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <thread>
#include <utility>

#include "status.h"
#include "team.h"

namespace maskedmha {

namespace {

// Runs Parallel tasks on the session's intra-op pool (KernelContext_ParallelFor, ORT API >= 17).
// num_batch 0: ORT hands the tasks out one at a time to whichever thread is free.
class OrtParallel final : public Parallel {
 public:
  explicit OrtParallel(const Ort::KernelContext& ctx) : ctx_(ctx) {}
  void For(size_t n, const std::function<void(size_t)>& fn) const override {
    if (n == 0) return;
    if (n == 1) {
      fn(0);
      return;
    }
    ctx_.ParallelFor(
        [](void* user, size_t i) { (*static_cast<const std::function<void(size_t)>*>(user))(i); },
        n, 0, const_cast<void*>(static_cast<const void*>(&fn)));
  }

 private:
  const Ort::KernelContext& ctx_;
};

}  // namespace

// Runs body(par) on the calling thread, its parallel phases shared with the pool's workers
// through a TeamParallel inside a single KernelContext_ParallelFor (why: team.h).  Each of the
// section's tasks checks its thread: the first one that runs on the calling thread leads (runs
// body), tasks on other threads wait for the leader to be running, then help until it is done.
// A worker never waits for the leader for long: if the calling thread ran none of the tasks
// (the pool can hand all of them to workers), the workers leave after 1 ms and the body runs
// afterwards with a section per phase (OrtParallel).  The calling thread leads, not whichever
// thread comes first, because the per-call buffers are kept per calling thread (forward.cc).
void RunTeam(const Ort::KernelContext& ctx, const std::function<void(const Parallel&)>& body) {
  struct Region {
    TeamParallel team;
    std::thread::id caller = std::this_thread::get_id();
    std::atomic<bool> led{false};
    const std::function<void(const Parallel&)>* body = nullptr;
    bool failed = false;
    Error error;
  } r;
  r.body = &body;
  // One task per pool thread is enough; the pool's size is not visible to a kernel, so ask for
  // as many as the machine has cores (tasks beyond the pool's threads return at once).
  // (Asked once: hardware_concurrency reads /sys on every call.)
  static const size_t tasks = std::clamp<size_t>(std::thread::hardware_concurrency(), 2, 64);
  ctx.ParallelFor(
      [](void* user, size_t) {
        Region& r = *static_cast<Region*>(user);
        if (std::this_thread::get_id() == r.caller && !r.led.exchange(true)) {
          try {
            (*r.body)(r.team);
          } catch (...) {
            r.error = CurrentError();
            r.failed = true;
          }
          r.team.Finish();
          return;
        }
        const auto start = std::chrono::steady_clock::now();
        while (!r.led.load(std::memory_order_acquire)) {
          if (std::chrono::steady_clock::now() - start > std::chrono::milliseconds(1)) return;
          std::this_thread::yield();
        }
        r.team.Help();
      },
      tasks, 0, &r);
  if (!r.led.load()) body(OrtParallel(ctx));
  // Ort::Exception carries the code, and ComputeV2 maps it back unchanged.
  if (r.failed) throw Ort::Exception(std::move(r.error.message), r.error.code);
}

}  // namespace maskedmha
