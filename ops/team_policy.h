// Whether a call's parallel phases run on a thread team (team_ort.h) or on the calling thread
// alone ("solo"), decided per node from what its own calls measured.
//
// Why: on a machine whose cores are oversubscribed (several sessions, other processes), splitting
// a call over threads buys no throughput -- the total work is the same -- but costs waiting: a
// team thread descheduled while it holds an item stalls the phase for a time slice, and threads
// that spin between phases burn core time the other sessions need.  There a small call is best run
// by its calling thread alone, with no pool section at all; a large call still gains from the
// team.  Which of the two is faster is measured, not guessed from the machine's load: the load
// visible to a process (/proc/loadavg) is the host's in a container, on a host with more cores.
//
// Signal: the calling thread's off-CPU share of a team call, 1 - (its CPU time / wall time).  On
// a quiet machine the calling thread runs (or spins) for the whole call, so the share is near 0
// and the policy runs the team with no exploration at all.  When the share's average rises above
// one threshold, the node is "contended" until it falls below a lower one; it then runs the
// mode with the lower time per unit of work (an estimate from the input sizes), and every
// kExploreEvery-th contended call runs the other mode to keep its time current (the team calls
// also keep the share current, so a machine that quiets down is noticed).
#pragma once

#include <atomic>
#include <cstdint>

namespace maskedmha {

enum class TeamMode { kAuto, kTeam, kSolo };

// MASKEDMHA_TEAM = auto | team | solo, read once (unknown values: auto).  team and solo force
// the mode (tests, benchmarks); results are bitwise the same in every mode.
TeamMode RequestedTeamMode();

class TeamPolicy {
 public:
  // True: run the next call solo.
  bool ChooseSolo();
  // True: time this call (solo: as ChooseSolo chose) and Record it.  A contended node times its
  // team calls and a sample of its solo ones, a quiet one a sample of its calls
  // (team_policy.cc: the sampling rates and why).
  bool ShouldMeasure(bool solo);
  // What a call measured: wall and calling-thread CPU seconds, and its work estimate (> 0).
  void Record(bool solo, double wall_s, double cpu_s, double work);

 private:
  // Relaxed atomics: several threads may run the node at once; a lost update only delays the
  // policy by a call.
  std::atomic<float> offcpu_{0.0f};       // EMA of the off-CPU share of team calls
  std::atomic<bool> contended_{false};    // set above kContendedShare, cleared below kQuietShare
  std::atomic<float> team_cost_{0.0f};    // EMA of wall seconds per unit of work, team calls
  std::atomic<float> solo_cost_{0.0f};    // the same, solo calls (0: none measured yet)
  std::atomic<uint32_t> contended_calls_{0};
  std::atomic<uint32_t> quiet_calls_{0};
  std::atomic<uint32_t> solo_calls_{0};
};

// The calling thread's CPU time in seconds (CLOCK_THREAD_CPUTIME_ID), and a monotonic wall clock.
double ThreadCpuSeconds();
double WallSeconds();

}  // namespace maskedmha
