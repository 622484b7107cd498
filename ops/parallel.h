// A minimal "run f(i) for i in [0, n)" interface, so the math (gemm.cc, attention.cc) does not
// depend on ONNX Runtime.  The kernel implements it with a TeamParallel (team.h) inside one
// KernelContext::ParallelFor per call, so the tasks run on the session's intra-op thread pool:
// the only pool we use (no OpenMP, no BLAS).
#pragma once

#include <algorithm>
#include <cstddef>
#include <functional>

namespace maskedmha {

class Parallel {
 public:
  virtual ~Parallel() = default;
  // Calls fn(i) once for every i in [0, n), possibly concurrently; returns when all are done.
  // fn must not throw.
  virtual void For(size_t n, const std::function<void(size_t)>& fn) const = 0;
};

// Splits [0, n) into at most 16 chunks of at least `grain` elements and runs fn(begin, end) for
// each on `par` (a single chunk runs on the calling thread).  For the setup loops (mask
// conversion, NaN checks, row gathers), which are too short to be worth a pool dispatch for
// small inputs.
template <typename Fn>
void ForChunks(const Parallel& par, size_t n, size_t grain, Fn&& fn) {
  constexpr size_t kMaxTasks = 16;
  const size_t tasks = std::max<size_t>(1, std::min(kMaxTasks, n / std::max<size_t>(grain, 1)));
  if (tasks == 1) {
    if (n) fn(size_t{0}, n);
    return;
  }
  par.For(tasks, [&](size_t t) { fn(t * n / tasks, (t + 1) * n / tasks); });
}

}  // namespace maskedmha
