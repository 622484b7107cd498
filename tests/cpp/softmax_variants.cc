// The two variants of the attention core's online softmax step (ops/softmax.h) must agree:
// OnlineSoftmax<V> for V4 / V8 / V16 (vector extensions: SSE, AVX2 and AVX-512 builds) and
// OnlineSoftmaxAvx512 (intrinsics; run only where the CPU has AVX-512F).  Random key blocks with
// masked (-inf) scores, fully masked rows, NaN scores and running state from earlier blocks; the
// first variant is the reference.  Exit status 0 when all agree; prints one summary line.
// Built and run by tests/test_softmax_variants.py: g++ -O2 -std=c++17 -I ops.
#include <cmath>
#include <cstdio>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "softmax.h"

namespace {

using namespace maskedmha;

constexpr int64_t kD = 8;  // accumulator width per row

struct Block {
  int64_t nq = 0, nw = 0;
  std::vector<float> s, m, lv, acc;  // lv: 16 lanes per row (the widest variant's)
  bool live = false;
};

Block Random(std::mt19937& rng) {
  std::uniform_int_distribution<int> rows(1, static_cast<int>(kQB)), chunks(1, kKB / 16);
  std::normal_distribution<float> normal(0.0f, 3.0f);
  std::uniform_real_distribution<float> u(0.0f, 1.0f);
  Block b;
  b.nq = rows(rng);
  b.nw = 16 * chunks(rng);
  b.s.assign(kQB * kKB, kNegInf);
  b.m.assign(kQB, kNegInf);
  b.lv.assign(kQB * 16, 0.0f);
  b.acc.assign(kQB * kD, 0.0f);
  const float masked = u(rng) * 0.6f;
  for (int64_t r = 0; r < b.nq; ++r) {
    const bool fully_masked = u(rng) < 0.1f;
    for (int64_t c = 0; c < b.nw; ++c) {
      float x = normal(rng);
      if (fully_masked || u(rng) < masked) x = kNegInf;
      else if (u(rng) < 0.002f) x = std::numeric_limits<float>::quiet_NaN();
      b.s[r * kKB + c] = x;
    }
    if (u(rng) < 0.5f) {  // state left by earlier blocks
      b.m[r] = normal(rng);
      for (int l = 0; l < 16; ++l) b.lv[r * 16 + l] = u(rng);
      for (int64_t d = 0; d < kD; ++d) b.acc[r * kD + d] = normal(rng);
    }
  }
  return b;
}

// Runs OnlineSoftmax<V>; lanes W..15 of lv stay unused, lanes 0..W-1 start from the sum of all
// 16 (so every variant starts from the same running sum).
template <typename V>
Block RunGeneric(Block b) {
  constexpr int W = sizeof(V) / sizeof(float);
  std::vector<float> lv(kQB * W, 0.0f);
  for (int64_t r = 0; r < kQB; ++r) {
    float sum = 0.0f;
    for (int l = 0; l < 16; ++l) sum += b.lv[r * 16 + l];
    lv[r * W] = sum;
  }
  b.live = softmax::OnlineSoftmax<V>(b.s.data(), b.nq, b.nw, kD, b.m.data(), lv.data(), b.acc.data());
  std::fill(b.lv.begin(), b.lv.end(), 0.0f);
  for (int64_t r = 0; r < kQB; ++r)
    for (int l = 0; l < W; ++l) b.lv[r * 16 + l] = lv[r * W + l];
  return b;
}

#ifdef MASKEDMHA_X86
Block RunAvx512(Block b) {
  for (int64_t r = 0; r < kQB; ++r) {
    float sum = 0.0f;
    for (int l = 0; l < 16; ++l) sum += b.lv[r * 16 + l];
    for (int l = 0; l < 16; ++l) b.lv[r * 16 + l] = l == 0 ? sum : 0.0f;
  }
  b.live = softmax::OnlineSoftmaxAvx512(b.s.data(), b.nq, b.nw, kD, b.m.data(), b.lv.data(),
                                        b.acc.data());
  return b;
}
#endif

bool Close(float x, float y, float rel) {
  if (std::isnan(x) || std::isnan(y)) return std::isnan(x) && std::isnan(y);
  if (x == y) return true;
  return std::fabs(x - y) <= rel * std::max(std::fabs(x), std::fabs(y)) + 1e-30f;
}

// Empty when a and b agree, else what differs first.
std::string Compare(const Block& a, const Block& b) {
  if (a.live != b.live) return "return value";
  for (int64_t r = 0; r < a.nq; ++r) {
    if (!Close(a.m[r], b.m[r], 0.0f)) return "running max of row " + std::to_string(r);
    if (!a.live) continue;  // nothing was exponentiated: s, lv and acc are not defined
    float sa = 0.0f, sb = 0.0f;
    for (int l = 0; l < 16; ++l) {
      sa += a.lv[r * 16 + l];
      sb += b.lv[r * 16 + l];
    }
    if (!Close(sa, sb, 1e-5f)) return "running sum of row " + std::to_string(r);
    for (int64_t c = 0; c < a.nw; ++c)
      if (!Close(a.s[r * kKB + c], b.s[r * kKB + c], 2e-6f))
        return "p[" + std::to_string(r) + "][" + std::to_string(c) + "]";
    for (int64_t d = 0; d < kD; ++d)
      if (!Close(a.acc[r * kD + d], b.acc[r * kD + d], 1e-6f))
        return "accumulator of row " + std::to_string(r);
  }
  return "";
}

}  // namespace

int main() {
  std::mt19937 rng(13);
  bool avx512 = false;
#ifdef MASKEDMHA_X86
  __builtin_cpu_init();
  avx512 = __builtin_cpu_supports("avx512f");
#endif
  const int kBlocks = 2000;
  int live = 0;
  for (int i = 0; i < kBlocks; ++i) {
    const Block in = Random(rng);
    const Block ref = RunGeneric<simd::V4>(in);
    live += ref.live;
    std::vector<std::pair<const char*, Block>> others = {{"V8", RunGeneric<simd::V8>(in)},
                                                         {"V16", RunGeneric<simd::V16>(in)}};
#ifdef MASKEDMHA_X86
    if (avx512) others.push_back({"avx512", RunAvx512(in)});
#endif
    for (const auto& [name, out] : others) {
      const std::string diff = Compare(ref, out);
      if (!diff.empty()) {
        std::printf("block %d: %s differs from V4 in %s\n", i, name, diff.c_str());
        return 1;
      }
    }
    if (i == 0) {  // the comparison can fail: a perturbed result is caught
      Block bad = ref;
      bad.m[0] = bad.m[0] + 1.0f;
      if (Compare(ref, bad).empty()) {
        std::printf("self-check failed: a perturbed running max was not caught\n");
        return 1;
      }
    }
  }
  std::printf("softmax variants agree on %d blocks (%d live): V4 V8 V16%s\n", kBlocks, live,
              avx512 ? " avx512" : " (avx512 not run: the CPU lacks AVX-512F)");
  return 0;
}
