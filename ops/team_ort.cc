// RunTeam and RunTeamOrSolo (see team_ort.h): the glue between ORT's pool, TeamParallel and
// TeamPolicy.
#include "team_ort.h"

#include <algorithm>
#include <mutex>
#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#endif
#include <cstdio>
#include <cstdlib>
#include <atomic>
#include <chrono>
#include <thread>
#include <utility>

#include "status.h"
#include "team.h"

namespace maskedmha {

namespace {

// Pause steps (~10-100 us, team.cc) a worker waits for the calling thread to lead before
// leading the call itself (RunTeam).
constexpr unsigned kLeadSpins = 2000;

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

// The calling thread alone: no pool section, no worker woken.
class SerialParallel final : public Parallel {
 public:
  void For(size_t n, const std::function<void(size_t)>& fn) const override {
    for (size_t i = 0; i < n; ++i) fn(i);
  }
};

}  // namespace

// Runs body(par), its parallel phases shared with the pool's workers through a TeamParallel
// inside a single KernelContext_ParallelFor (why: team.h).  One of the section's tasks leads
// (runs body), the others help until it is done.  The calling thread leads when it gets to a
// task first, as it does on a quiet machine; a worker that has waited kLeadSpins for it leads
// itself, and the calling thread helps when it arrives.  Before, only the calling thread could
// lead and workers waited up to 1 ms for it, then left: on a busy machine the calling thread
// is often descheduled right after waking the pool, and the call stalled for that time slice.
// Measured (AMD EPYC Zen 5, 2 cores, 2 threads, another process spinning on core 0 and other
// jobs running, one interleaved run, 150 calls): 1x32 E512/8 median 6.11 ms -> 0.47 ms (ORT
// com.microsoft.Attention 0.61); 1x128 E768/12 causal 16.0 -> 8.4 ms (ORT 4.0).  With only the
// busy process besides, 8x128 E768/12 25 % got 15-25 % slower than the build before (21.4-22.6
// ms, ORT 18.9-19.2); measured again later with TeamPolicy (RunTeamOrSolo), in a quieter VM,
// two runs: 19.3 / 19.4 ms against ORT's 20.7 / 17.9, the build before 19.9 / 20.6
// (benchmarks/README.md, "Many sessions and busy cores").
// The leader's calling-thread buffers (workspace.h) are then the worker's: a worker that leads
// keeps its own copy of them, so per-call scratch can exist once per pool thread that ever
// led (only on a busy machine).  If no task led at all (not seen: a worker always leads after
// its wait), the body runs afterwards with a section per phase (OrtParallel).
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
        bool lead = std::this_thread::get_id() == r.caller;
        if (!lead) {
          // A worker gives the calling thread a head start, then leads itself.
          for (unsigned spins = 0; !r.led.load(std::memory_order_acquire) && spins < kLeadSpins;
               ++spins) {
#if defined(__x86_64__) || defined(__i386__)
            _mm_pause();
#endif
          }
          lead = !r.led.load(std::memory_order_acquire);
        }
        if (lead && !r.led.exchange(true)) {
          try {
            (*r.body)(r.team);
          } catch (...) {
            r.error = CurrentError();
            r.failed = true;
          }
          r.team.Finish();
          return;
        }
        r.team.Help();
      },
      tasks, 0, &r);
  if (!r.led.load()) body(OrtParallel(ctx));
  // Ort::Exception carries the code, and ComputeV2 maps it back unchanged.
  if (r.failed) throw Ort::Exception(std::move(r.error.message), r.error.code);
}

void RunTeamOrSolo(const Ort::KernelContext& ctx, TeamPolicy& policy,
                   const std::function<double()>& work,
                   const std::function<void(const Parallel&)>& body) {
  const TeamMode forced = RequestedTeamMode();
  const bool automatic = forced == TeamMode::kAuto;
  const bool solo = automatic ? policy.ChooseSolo() : forced == TeamMode::kSolo;
  const bool timed = automatic && policy.ShouldMeasure(solo);
  const double wall0 = timed ? WallSeconds() : 0.0, cpu0 = timed ? ThreadCpuSeconds() : 0.0;
  if (solo) body(SerialParallel());
  else RunTeam(ctx, body);
  // Not reached when body throws: a failed call says nothing about the modes.
  if (!timed) return;
  const double wall = WallSeconds() - wall0, cpu = ThreadCpuSeconds() - cpu0;
  policy.Record(solo, wall, cpu, work());
  // MASKEDMHA_TEAM_TRACE: one line per timed call on stderr (how kContendedShare was measured;
  // also shows a user why calls run solo).
  static const bool trace = std::getenv("MASKEDMHA_TEAM_TRACE") != nullptr;
  if (trace)
    std::fprintf(stderr, "team-trace %s wall %.3f ms cpu %.3f ms\n", solo ? "solo" : "team",
                 wall * 1e3, cpu * 1e3);
}

}  // namespace maskedmha
