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
// Weight of a new call in the EMAs: a handful of calls decide, one outlier does not.
constexpr float kEmaWeight = 0.25f;
// A contended node runs the mode it did not choose every this many calls (its cost EMA would
// otherwise never change), none on a quiet machine.  With 8, 4 sessions on 2 cores at 1x32 E512
// (AMD EPYC): the exploring team calls averaged 0.77 ms against the solo calls' 0.37 and were
// most of the slowest tenth (p90 1.8 ms); with 32 they are 3 % of the calls.
constexpr uint32_t kExploreEvery = 32;
// A quiet node times one call in this many (ShouldMeasure): reading the thread's CPU clock costs
// ~0.5 us (a system call, measured here), 2 per timed call, against 13 us for a 1x16 E64 call.
// Two samples with a share of 0.6 reach the threshold from 0: contention is noticed within ~16
// calls.
constexpr uint32_t kSampleEvery = 8;

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
  if (offcpu_.load(std::memory_order_relaxed) < kContendedShare) return false;
  const uint32_t n = contended_calls_.fetch_add(1, std::memory_order_relaxed);
  const float solo = solo_cost_.load(std::memory_order_relaxed);
  const float team = team_cost_.load(std::memory_order_relaxed);
  // No solo call measured yet: try one.
  const bool solo_better = solo == 0.0f || solo < team;
  return (n % kExploreEvery == kExploreEvery - 1) ? !solo_better : solo_better;
}

bool TeamPolicy::ShouldMeasure() {
  if (offcpu_.load(std::memory_order_relaxed) >= kContendedShare) return true;
  return quiet_calls_.fetch_add(1, std::memory_order_relaxed) % kSampleEvery == 0;
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
  offcpu_.store(old_share + kEmaWeight * (share - old_share), std::memory_order_relaxed);
}

}  // namespace maskedmha
