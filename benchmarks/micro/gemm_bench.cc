// Times maskedmha::Gemm (the projections' GEMM) on one shape, or the register-only FMA peak of
// this CPU; prints one JSON line.  Built and driven by compare_gemm.py.
//
//   gemm_bench M N K [threads] [reps]     C = A (M x K) . W^T (W: N x K, PyTorch Linear layout)
//   gemm_bench --peak [threads]           FMA peak: 24 independent accumulator chains per thread
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <vector>

#include "cpu.h"
#include "gemm.h"
#include "thread_pool.h"

namespace {

double Seconds() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
typedef float V16 __attribute__((vector_size(64)));
typedef float V8 __attribute__((vector_size(32)));
// 24 accumulators: more chains than FMA latency x ports, so the loop runs at the FMA throughput.
template <typename V>
static inline __attribute__((always_inline)) float FmaLoop(long iters) {
  V acc[24], b = V{} + 1.0000001f, c = V{} + 1e-7f;
#pragma GCC unroll 24
  for (int i = 0; i < 24; ++i) acc[i] = V{} + static_cast<float>(i);
  for (long n = 0; n < iters; ++n) {
#pragma GCC unroll 24  // every accumulator in its own register
    for (int i = 0; i < 24; ++i) acc[i] = acc[i] * b + c;
  }
  float s = 0;
  for (int i = 0; i < 24; ++i) s += acc[i][0];
  return s;
}
__attribute__((target("avx512f,fma"), noinline)) float Fma512(long iters) { return FmaLoop<V16>(iters); }
__attribute__((target("avx2,fma"), noinline)) float Fma256(long iters) { return FmaLoop<V8>(iters); }
#endif

int Peak(int threads) {
#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
  const bool avx512 = maskedmha::SelectedIsa() == maskedmha::Isa::kAvx512;
  if (maskedmha::SelectedIsa() == maskedmha::Isa::kGeneric) {
    std::printf("{\"error\": \"no AVX2/AVX-512 on this CPU\"}\n");
    return 1;
  }
  const long iters = 20000000;
  const int lanes = avx512 ? 16 : 8;
  ThreadPool pool(threads);
  std::vector<float> sink(threads);
  double best = 0;
  for (int rep = 0; rep < 5; ++rep) {
    const double t0 = Seconds();
    pool.For(threads, [&](size_t t) { sink[t] = avx512 ? Fma512(iters) : Fma256(iters); });
    const double dt = Seconds() - t0;
    best = std::max(best, 2.0 * lanes * 24 * iters * threads / dt / 1e9);
  }
  std::printf("{\"peak_gflops\": %.1f, \"threads\": %d, \"isa\": \"%s\", \"sink\": %g}\n", best,
              threads, maskedmha::IsaName(maskedmha::SelectedIsa()), sink[0]);
  return 0;
#else
  (void)threads;
  std::printf("{\"error\": \"x86 only\"}\n");
  return 1;
#endif
}

}  // namespace

int main(int argc, char** argv) {
  if (argc >= 2 && std::strcmp(argv[1], "--peak") == 0) return Peak(argc > 2 ? std::atoi(argv[2]) : 1);
  if (argc < 4) {
    std::fprintf(stderr, "usage: gemm_bench M N K [threads] [reps] | --peak [threads]\n");
    return 2;
  }
  const size_t M = std::atol(argv[1]), N = std::atol(argv[2]), K = std::atol(argv[3]);
  const int threads = argc > 4 ? std::atoi(argv[4]) : 1;
  const int reps = argc > 5 ? std::atoi(argv[5]) : 20;
  std::mt19937 rng(1);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  std::vector<float> a(M * K), w(N * K), bias(N), c(M * N);
  for (auto& x : a) x = nd(rng);
  for (auto& x : w) x = nd(rng);
  for (auto& x : bias) x = nd(rng);
  maskedmha::PackedWeight pw;
  maskedmha::PackWeight(w.data(), 0, N, K, &pw);
  ThreadPool pool(threads);
  maskedmha::Gemm(a.data(), K, M, pw, bias.data(), c.data(), N, pool);  // warm-up
  std::vector<double> ts;
  for (int r = 0; r < reps; ++r) {
    const double t0 = Seconds();
    maskedmha::Gemm(a.data(), K, M, pw, bias.data(), c.data(), N, pool);
    ts.push_back(Seconds() - t0);
  }
  std::sort(ts.begin(), ts.end());
  // Check a sample of outputs against a double-precision dot product.
  double worst = 0;
  for (size_t s = 0; s < 64 && M && N; ++s) {
    const size_t i = (s * 7919) % M, j = (s * 104729) % N;
    double ref = bias[j], mag = std::fabs(bias[j]);
    for (size_t p = 0; p < K; ++p) {
      ref += static_cast<double>(a[i * K + p]) * w[j * K + p];
      mag += std::fabs(static_cast<double>(a[i * K + p]) * w[j * K + p]);
    }
    worst = std::max(worst, std::fabs(c[i * N + j] - ref) / std::max(mag, 1e-30));
  }
  const double flop = 2.0 * M * N * K;
  std::printf("{\"M\": %zu, \"N\": %zu, \"K\": %zu, \"threads\": %d, \"isa\": \"%s\", "
              "\"median_ms\": %.4f, \"min_ms\": %.4f, \"gflops\": %.1f, \"gflops_best\": %.1f, "
              "\"max_rel_err\": %.3g}\n",
              M, N, K, threads, maskedmha::IsaName(maskedmha::SelectedIsa()),
              ts[ts.size() / 2] * 1e3, ts[0] * 1e3, flop / ts[ts.size() / 2] / 1e9,
              flop / ts[0] / 1e9, worst);
  return 0;
}
