// A minimal "run f(i) for i in [0, n)" interface, so the math (gemm.cc, attention.cc) does not
// depend on ONNX Runtime.  The kernel implements it with KernelContext::ParallelFor, which runs
// the tasks on the session's intra-op thread pool: the only pool we use (no OpenMP, no BLAS).
#pragma once

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

// Runs everything on the calling thread (used when there is nothing worth splitting).
class SerialParallel final : public Parallel {
 public:
  void For(size_t n, const std::function<void(size_t)>& fn) const override {
    for (size_t i = 0; i < n; ++i) fn(i);
  }
};

}  // namespace maskedmha
