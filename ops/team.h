// One parallel section for a whole kernel call: a "leader" thread runs the call and posts each
// parallel phase (Parallel::For) to "helper" threads that stay in the section between phases.
//
// Why: a kernel call has three to five parallel phases (A packing, Q/K/V projections,
// attention, output projection).  Through KernelContext_ParallelFor each one is a section of
// ORT's pool, and when the pool does not spin (session.intra_op.allow_spinning = 0, chosen by
// servers that share their cores) every section wakes the sleeping workers again: measured here
// (2 threads), an empty section costs ~14 us and two 10 us tasks take 41 us instead of 10 -- a
// 1x32 call (0.4 ms) paid more in wake-ups than in its attention.  With one section per call
// the workers are woken once and then wait for the next phase by spinning briefly (then they
// sleep on a condition variable, so a busy machine's cores go to the threads that have work).
//
// The leader claims items like the helpers and never waits for a helper to arrive: a phase
// waits only for items that some running thread has claimed, so a call finishes even when no
// helper ever joins (a pool of one thread, or workers busy elsewhere).  A helper may join before
// the first phase, during the call or after Finish() (it then returns at once), but it returns
// only after Finish(): RunTeam (team_ort.cc) lets a worker help only once the leader runs.
// The TeamParallel must outlive every Help() call.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <mutex>

#include "parallel.h"
#include "sleep_condition.h"

namespace maskedmha {

class TeamParallel final : public Parallel {
 public:
  // Leader only: runs fn(i) for i in [0, n) on the leader and every helper in Help(); returns
  // when all are done.  fn must not throw.
  void For(size_t n, const std::function<void(size_t)>& fn) const override;
  // Helper: runs the items of every phase posted until Finish().
  void Help() const;
  // Leader: no more phases; helpers return.
  void Finish() const;

 private:
  // Claims and runs one item of phase `epoch` (the lowest unclaimed one, or the highest if
  // from_back); false if it has none left (or is over).
  bool RunOne(uint32_t epoch, bool from_back) const;

  // Epoch of the current phase and how many of its items have been claimed from the front and
  // from the back (layout in team.cc); a claim is a compare-exchange on all three, so an item
  // can only be claimed in the phase it belongs to.
  mutable std::atomic<uint64_t> state_{0};
  mutable std::atomic<size_t> n_{0};  // items of the current phase
  mutable std::atomic<const std::function<void(size_t)>*> fn_{nullptr};
  mutable std::atomic<size_t> finished_{0};  // items of the current phase run to the end
  mutable std::atomic<bool> done_{false};
  mutable uint32_t epoch_ = 0;  // leader only

  // A helper that found no work for a while sleeps here until the next phase or Finish()
  // instead of spinning on (team.cc, Help: why).
  void WakeSleepers() const;
  mutable std::atomic<int> sleepers_{0};
  mutable std::atomic<bool> leader_sleeps_{false};  // the leader waits for the last items
  mutable std::mutex mutex_;
  mutable SleepCondition wake_;  // not std::condition_variable: sleep_condition.h
};

}  // namespace maskedmha
