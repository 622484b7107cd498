// Times the attention core (maskedmha::Attention: scores, online softmax, P.V) alone, on
// projections laid out as the forward pass lays them out (Q, K, V side by side in rows of 3E,
// or compacted K/V rows when keys are padded); prints one JSON line.  For profiling, e.g.
//   perf record ./attention_bench 2 1024 8 1 10 && perf report
//
//   attention_bench B L H [threads] [reps] [pad_fraction] [causal]     (D = 64, S = L)
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <vector>

#include "attention.h"
#include "cpu.h"
#include "thread_pool.h"

int main(int argc, char** argv) {
  if (argc < 4) {
    std::fprintf(stderr, "usage: attention_bench B L H [threads] [reps] [pad_fraction] [causal]\n");
    return 2;
  }
  const int64_t B = std::atol(argv[1]), L = std::atol(argv[2]), H = std::atol(argv[3]), D = 64;
  const int threads = argc > 4 ? std::atoi(argv[4]) : 1;
  const int reps = argc > 5 ? std::atoi(argv[5]) : 10;
  const double pad = argc > 6 ? std::atof(argv[6]) : 0.0;
  const bool causal = argc > 7 && std::atoi(argv[7]) != 0;
  const int64_t E = H * D, S = L;
  std::mt19937 rng(1);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  std::vector<float> qkv(B * L * 3 * E), out(B * L * E);
  for (auto& x : qkv) x = nd(rng);
  // Padding as the kernel's compaction leaves it: the first (1 - pad) * S keys of every item
  // kept, their K and V rows gathered (2E wide).
  const int64_t keep = std::max<int64_t>(1, std::lround(S * (1.0 - pad)));
  std::vector<int64_t> offset(B + 1), index;
  std::vector<float> kv;
  for (int64_t b = 0; b < B; ++b) {
    offset[b] = static_cast<int64_t>(index.size());
    for (int64_t j = 0; j < keep; ++j) {
      index.push_back(j);
      const float* row = qkv.data() + (b * S + j) * 3 * E + E;
      kv.insert(kv.end(), row, row + 2 * E);
    }
  }
  offset[B] = static_cast<int64_t>(index.size());
  maskedmha::AttentionArgs a;
  a.B = B; a.L = L; a.S = S; a.H = H; a.D = D;
  a.scale = 1.0f / std::sqrt(static_cast<float>(D));
  a.q = qkv.data();
  a.q_stride = 3 * E;
  if (pad > 0) {
    a.k = kv.data(); a.v = kv.data() + E;
    a.k_stride = a.v_stride = 2 * E;
    a.kv_offset = offset.data();
    a.key_index = index.data();
  } else {
    a.k = qkv.data() + E; a.v = qkv.data() + 2 * E;
    a.k_stride = a.v_stride = 3 * E;
  }
  a.causal = causal;
  a.out = out.data();
  a.out_stride = E;
  ThreadPool pool(threads);
  maskedmha::Attention(a, pool);  // warm-up
  std::vector<double> ts;
  for (int r = 0; r < reps; ++r) {
    const auto t0 = std::chrono::steady_clock::now();
    maskedmha::Attention(a, pool);
    ts.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  }
  std::sort(ts.begin(), ts.end());
  // Reference (double) for a sample of (item, head, query row).
  double worst = 0;
  for (int s = 0; s < 16; ++s) {
    const int64_t b = s % B, h = (s * 5) % H, i = (s * 37) % L;
    const float* q = qkv.data() + (b * L + i) * 3 * E + h * D;
    std::vector<double> score;
    double mx = -INFINITY;
    for (int64_t j = 0; j < keep; ++j) {
      if (causal && j > i) break;
      const float* k = qkv.data() + (b * S + j) * 3 * E + E + h * D;
      double d = 0;
      for (int64_t c = 0; c < D; ++c) d += static_cast<double>(q[c]) * k[c];
      score.push_back(d * a.scale);
      mx = std::max(mx, score.back());
    }
    double sum = 0;
    for (auto& x : score) sum += (x = std::exp(x - mx));
    for (int64_t c = 0; c < D; ++c) {
      double ref = 0, mag = 0;
      for (size_t j = 0; j < score.size(); ++j) {
        const double v = qkv[(b * S + j) * 3 * E + 2 * E + h * D + c];
        ref += score[j] / sum * v;
        mag += std::fabs(score[j] / sum * v);
      }
      worst = std::max(worst, std::fabs(out[(b * L + i) * E + h * D + c] - ref) / std::max(mag, 1e-30));
    }
  }
  // FLOPs of the work done: QK^T and P.V over the kept keys (under causal, about half).
  double pairs = static_cast<double>(L) * keep;
  if (causal) pairs = 0.5 * static_cast<double>(std::min(L, keep)) * (std::min(L, keep) + 1) +
                      static_cast<double>(std::max<int64_t>(0, L - keep)) * keep;
  const double flop = 4.0 * B * H * pairs * D;
  std::printf("{\"B\": %lld, \"L\": %lld, \"H\": %lld, \"D\": %lld, \"pad\": %.2f, \"causal\": %d, "
              "\"threads\": %d, \"isa\": \"%s\", \"median_ms\": %.4f, \"min_ms\": %.4f, "
              "\"gflops\": %.1f, \"max_rel_err\": %.3g}\n",
              static_cast<long long>(B), static_cast<long long>(L), static_cast<long long>(H),
              static_cast<long long>(D), pad, causal ? 1 : 0, threads,
              maskedmha::IsaName(maskedmha::SelectedIsa()), ts[ts.size() / 2] * 1e3, ts[0] * 1e3,
              flop / ts[ts.size() / 2] / 1e9, worst);
  return 0;
}
