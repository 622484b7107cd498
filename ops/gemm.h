// Projection GEMMs: C = A · W^T + bias, with W in PyTorch's Linear layout (N, K).
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include "aligned.h"
#include "parallel.h"

namespace maskedmha {

// W^T cut into column panels of `nr` output columns (nr = the micro-kernel width chosen for this
// CPU), each panel a contiguous (K, nr) block, the last one zero-padded.  The inner loop of the
// GEMM then reads one contiguous row of nr weights per k and runs over contiguous output
// columns (vectorisable without reassociating sums).  Packing costs N·K, the GEMM M·N·K.
struct PackedWeight {
  size_t n = 0, k = 0, nr = 0;
  AlignedVector<float> panels;  // ceil(n / nr) * k * nr
};
// Packs rows [row0, row0 + n) of the (*, k) matrix w.
void PackWeight(const float* w, size_t row0, size_t n, size_t k, PackedWeight* out);

// C[m, ldc] (first n columns) = A[m, lda] (first k columns) · W^T + bias (bias may be null).
// With a_rows, row i of A is row a_rows[i] of a (a gathered subset, read in place while A is
// packed: no gathered copy).
void Gemm(const float* a, size_t lda, size_t m, const PackedWeight& w, const float* bias,
          float* c, size_t ldc, const Parallel& par, const int64_t* a_rows = nullptr);

}  // namespace maskedmha
