// TeamPolicy (see team_policy.h).
#include "team_policy.h"

#include <time.h>

#include <cstdlib>
#include <cstring>

namespace maskedmha {

namespace {

// Off-CPU share (EMA over team calls) above which a node counts as contended.  Measured with
// MASKEDMHA_TEAM_TRACE on a 2-core AMD EPYC, 2 threads: on the idle machine the team calls'
// share averaged 0.001 (1x32 E512, 1x128 E768 causal) to 0.010 (8x128 E768, 4x512 E768), 90 %
// of calls below 0.017; with 4 sessions calling at once it averaged 0.45-0.79 (small calls
// bimodal: a call either got both cores, ~0, or waited a time slice, ~1).
constexpr float kContendedShare = 0.2f;
// ... and below which a contended node is quiet again.  Not the same threshold: under
// contention the small calls' shares are bimodal (~0 or ~1), and a few lucky team calls would pull
// an average of 0.45-0.79 under 0.2 and send the node back to the team.  Nine calls of share 0
// bring an average of 0.6 under 0.05; idle shares average <= 0.01.  (Measured with and without
// it, 1x32 E512, 4 sessions on 2 cores: the same p90, 1.94 ms -- then set by the timed solo calls,
// kSoloSampleEvery -- so its effect on the tail is not separately measured.)
constexpr float kQuietShare = 0.05f;
// Weight of a new call in the EMAs: a handful of calls decide, one outlier does not.
constexpr float kEmaWeight = 0.25f;
// A contended node runs the mode it did not choose every this many calls (its cost EMA would
// otherwise never change), none on a quiet machine.  4 sessions on 2 cores at 1x32 E512 (AMD
// EPYC): an exploring team call took 0.77 ms on average against a solo call's 0.37; with 32 they
// are 3 % of the calls (with none at all the p90 did not change: 1.95 ms, set by kSoloSampleEvery).
constexpr uint32_t kExploreEvery = 32;
// A quiet node times one call in this many (ShouldMeasure): reading the thread's CPU clock costs
// ~0.5 us (a system call, measured here), 2 per timed call, against 13 us for a 1x16 E64 call.
// Two samples with a share of 0.6 reach the threshold from 0: contention is noticed within ~16
// calls.
constexpr uint32_t kSampleEvery = 8;
// ... except a node's first calls, all timed: sessions start in a server that may already be
// busy, and until contention is noticed every call runs the team: with only the sampling, each
// of 4 sessions on 2 cores made ~20 team calls before noticing.
constexpr uint32_t kLearnCalls = 16;
// A contended node times every team call and one solo call in this many.  Reading the thread's
// CPU clock is a system call, and on an oversubscribed machine a thread due to be preempted is
// preempted on its way out of one: timing every solo call moved those preemptions into the calls
// (4 sessions on 2 cores, 1x32 E512, every call solo: p90 2.1 ms timed against 0.45 untimed, the
// same throughput; one in 4 timed: p90 still 1.7 ms; one in 32: 0.50-0.54, as ORT's 0.76-0.93).
// The solo cost only has to stay comparable with the team's, which one call in 32 keeps.
constexpr uint32_t kSoloSampleEvery = 32;

float Ema(float old_value, float sample) {
  return old_value == 0.0f ? sample : old_value + kEmaWeight * (sample - old_value);
}

TeamMode ReadMode() {
  const char* env = std::getenv("MASKEDMHA_TEAM");
  if (env == nullptr) return TeamMode::kAuto;
  if (std::strcmp(env, "team") == 0) return TeamMode::kTeam;
  if (std::strcmp(env, "solo") == 0) return TeamMode::kSolo;
  return TeamMode::kAuto;
}

double Seconds(clockid_t clock) {
  timespec ts;
  if (clock_gettime(clock, &ts) != 0) return 0.0;
  return static_cast<double>(ts.tv_sec) + 1e-9 * static_cast<double>(ts.tv_nsec);
}

}  // namespace

TeamMode RequestedTeamMode() {
  static const TeamMode mode = ReadMode();
  return mode;
}

double ThreadCpuSeconds() { return Seconds(CLOCK_THREAD_CPUTIME_ID); }
double WallSeconds() { return Seconds(CLOCK_MONOTONIC); }

bool TeamPolicy::ChooseSolo() {
  if (!contended_.load(std::memory_order_relaxed)) return false;
  const uint32_t n = contended_calls_.fetch_add(1, std::memory_order_relaxed);
  const float solo = solo_cost_.load(std::memory_order_relaxed);
  const float team = team_cost_.load(std::memory_order_relaxed);
  // No solo call measured yet: try one.
  const bool solo_better = solo == 0.0f || solo < team;
  return (n % kExploreEvery == kExploreEvery - 1) ? !solo_better : solo_better;
}

bool TeamPolicy::ShouldMeasure(bool solo) {
  if (contended_.load(std::memory_order_relaxed))
    return !solo || solo_calls_.fetch_add(1, std::memory_order_relaxed) % kSoloSampleEvery == 0;
  const uint32_t n = quiet_calls_.fetch_add(1, std::memory_order_relaxed);
  return n < kLearnCalls || n % kSampleEvery == 0;
}

void TeamPolicy::Record(bool solo, double wall_s, double cpu_s, double work) {
  if (!(wall_s > 0.0) || !(work > 0.0)) return;
  const float cost = static_cast<float>(wall_s / work);
  std::atomic<float>& c = solo ? solo_cost_ : team_cost_;
  c.store(Ema(c.load(std::memory_order_relaxed), cost), std::memory_order_relaxed);
  if (solo) return;
  float share = static_cast<float>(1.0 - cpu_s / wall_s);
  share = share < 0.0f ? 0.0f : (share > 1.0f ? 1.0f : share);
  // Not Ema(): a share of 0 is a real sample here.
  const float old_share = offcpu_.load(std::memory_order_relaxed);
  const float new_share = old_share + kEmaWeight * (share - old_share);
  offcpu_.store(new_share, std::memory_order_relaxed);
  if (new_share >= kContendedShare) contended_.store(true, std::memory_order_relaxed);
  else if (new_share < kQuietShare) contended_.store(false, std::memory_order_relaxed);
}

}  // namespace maskedmha
