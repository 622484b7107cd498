// TeamParallel (see team.h).
//
// Memory order: the leader first closes the finished phase (state = next epoch, nothing
// claimable), then publishes fn_ / n_ with release and opens the phase (item 0) with release.
// A claimer loads the state with acquire, n_ with acquire and claims by compare-exchange on the
// state.  A claim on an old phase cannot succeed once that phase is closed, and a claimer that
// sees the new n_ also sees the closing store (it happened before), so a stale (epoch, item)
// with a new, larger n_ fails its compare-exchange.  A successful claim belongs to a phase whose
// items are not all finished, so the leader is still inside that phase's For and fn_ is its
// function.  Each finished item is counted with release; the leader's acquire load of the count
// makes the items' writes visible to what it does next.
#include "team.h"

#include <algorithm>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#endif

namespace maskedmha {

namespace {

// The state word: | epoch (16 bits) | claimed from the front (24) | claimed from the back (24) |.
// The leader claims items 0, 1, 2, ... and the helpers n-1, n-2, ...: with two threads each
// works through a contiguous range, as with ORT's own scheduling, so consecutive GEMM tasks
// that share a block of weights run on the same core (measured: handing items out alternately
// made 4x512 E768 3 % slower).
constexpr int kItemBits = 24;
constexpr uint64_t kItemMask = (uint64_t{1} << kItemBits) - 1;
constexpr uint64_t kClosed = kItemMask;       // front count of a phase being replaced
constexpr size_t kMaxItems = kItemMask - 1;   // items per phase (larger For: several phases)
constexpr uint32_t kMaxEpoch = 0xFFFF;        // phases per call (beyond: run serially)

uint64_t Pack(uint64_t epoch, uint64_t front, uint64_t back) {
  return epoch << (2 * kItemBits) | front << kItemBits | back;
}
uint32_t EpochOf(uint64_t s) { return static_cast<uint32_t>(s >> (2 * kItemBits)); }

// Pause steps a thread waits (a helper for the next phase, the leader for the last items of a
// phase) before it sleeps on the condition variable: 2000 pauses are ~10-100 us depending on
// the CPU's pause latency (~10-140 cycles), longer than the leader's serial steps between the
// phases of a call (a few us), so in a quiet call nobody sleeps.  Why sleep at all (before:
// spin with sched_yield for as long as it took): on a machine busier than its cores (several
// sessions, another process), a spinning thread holds a core that the thread it waits for
// needs, and sched_yield does not give it away under CFS.  Measured with team_ort.cc's change,
// see there; 200 instead of 2000 measured no better with 4 sessions on 2 cores (throughput
// against ORT's Attention 0.93 / 0.68 / 0.78 at 1x32 E512, 1x32 E768, 1x128 causal, against
// 0.92 / 0.78 / 0.85; AMD EPYC Zen 5, benchmarks/concurrency.py).  Not tuned to one CPU: it
// bounds a wait in time, and only the pause latency, within the range above, depends on the CPU.
constexpr unsigned kHelperSpins = 2000;

}  // namespace

bool TeamParallel::RunOne(uint32_t epoch, bool from_back) const {
  uint64_t s = state_.load(std::memory_order_acquire);
  for (;;) {
    if (EpochOf(s) != epoch) return false;
    const uint64_t front = (s >> kItemBits) & kItemMask, back = s & kItemMask;
    if (front == kClosed) return false;
    const uint64_t n = n_.load(std::memory_order_acquire);
    if (front + back >= n) return false;
    const size_t item = static_cast<size_t>(from_back ? n - 1 - back : front);
    const uint64_t next = from_back ? s + 1 : s + (uint64_t{1} << kItemBits);
    if (state_.compare_exchange_weak(s, next, std::memory_order_acq_rel,
                                     std::memory_order_acquire)) {
      (*fn_.load(std::memory_order_relaxed))(item);
      if (finished_.fetch_add(1, std::memory_order_seq_cst) + 1 == n &&
          leader_sleeps_.load(std::memory_order_seq_cst)) {
        { std::lock_guard<std::mutex> lock(mutex_); }
        wake_.notify_all();
      }
      return true;
    }
  }
}

void TeamParallel::For(size_t n, const std::function<void(size_t)>& fn) const {
  if (n == 0) return;
  if (n == 1 || epoch_ >= kMaxEpoch) {  // nothing to share (or a call of 65535 phases)
    for (size_t i = 0; i < n; ++i) fn(i);
    return;
  }
  if (n > kMaxItems) {
    for (size_t base = 0; base < n; base += kMaxItems) {
      const std::function<void(size_t)> part = [&](size_t i) { fn(base + i); };
      For(std::min(kMaxItems, n - base), part);
    }
    return;
  }
  ++epoch_;
  state_.store(Pack(epoch_, kClosed, 0), std::memory_order_release);
  finished_.store(0, std::memory_order_relaxed);
  fn_.store(&fn, std::memory_order_release);
  n_.store(n, std::memory_order_release);
  state_.store(Pack(epoch_, 0, 0), std::memory_order_seq_cst);
  WakeSleepers();
  while (RunOne(epoch_, false)) {
  }
  // The last items run on helpers: spin briefly, then sleep until the last one finishes (a
  // helper that was descheduled holding an item may take a time slice to come back; a sleeping
  // leader leaves its core to it).
  for (unsigned spins = 0; finished_.load(std::memory_order_acquire) < n; ++spins) {
    if (spins < kHelperSpins) {
#if defined(__x86_64__) || defined(__i386__)
      _mm_pause();
#endif
      continue;
    }
    std::unique_lock<std::mutex> lock(mutex_);
    leader_sleeps_.store(true, std::memory_order_seq_cst);
    wake_.wait(lock, [&] { return finished_.load(std::memory_order_seq_cst) >= n; });
    leader_sleeps_.store(false, std::memory_order_relaxed);
  }
}

// Lost wake-ups: a helper goes to sleep only after incrementing sleepers_ and re-reading the
// state under the mutex; the leader publishes the state (or done_) before reading sleepers_,
// all sequentially consistent, so either the helper sees the new phase or the leader sees the
// sleeper and notifies under the mutex (after the helper has started waiting).
void TeamParallel::WakeSleepers() const {
  if (sleepers_.load(std::memory_order_seq_cst) == 0) return;
  { std::lock_guard<std::mutex> lock(mutex_); }
  wake_.notify_all();
}

void TeamParallel::Finish() const {
  done_.store(true, std::memory_order_seq_cst);
  WakeSleepers();
}

void TeamParallel::Help() const {
  unsigned spins = 0;
  for (;;) {
    const uint64_t s = state_.load(std::memory_order_acquire);
    const uint32_t epoch = EpochOf(s);
    if (epoch != 0 && RunOne(epoch, true)) {
      spins = 0;
      continue;
    }
    if (done_.load(std::memory_order_acquire)) return;
    if (++spins < kHelperSpins) {
#if defined(__x86_64__) || defined(__i386__)
      _mm_pause();
#endif
      continue;
    }
    std::unique_lock<std::mutex> lock(mutex_);
    sleepers_.fetch_add(1, std::memory_order_seq_cst);
    wake_.wait(lock, [&] {
      return done_.load(std::memory_order_seq_cst) || state_.load(std::memory_order_seq_cst) != s;
    });
    sleepers_.fetch_sub(1, std::memory_order_relaxed);
    spins = 0;
  }
}

}  // namespace maskedmha
