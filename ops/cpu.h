// Which instruction-set variant of the inner loops to run, decided once per process at run time,
// and the one way the loops pick their variant (PickIsa / MASKEDMHA_PICK_ISA).
#pragma once

// Variants for AVX2+FMA and AVX-512 are compiled with per-function target attributes (no -march
// flag), only for x86 with GCC / Clang; elsewhere every pick is the generic variant.
#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
#define MASKEDMHA_X86 1
#define MASKEDMHA_TARGET_AVX2 __attribute__((target("avx2,fma")))
#define MASKEDMHA_TARGET_AVX512 __attribute__((target("avx512f,avx2,fma,prefer-vector-width=512")))
#define MASKEDMHA_PICK_ISA(generic, avx2, avx512) ::maskedmha::PickIsa(generic, avx2, avx512)
#else
#define MASKEDMHA_PICK_ISA(generic, avx2, avx512) (generic)
#endif

namespace maskedmha {

enum class Isa { kGeneric = 0, kAvx2 = 1, kAvx512 = 2 };

// The widest variant this CPU supports (AVX-512F, else AVX2+FMA, else the portable build).
// The environment variable MASKEDMHA_ISA=generic|avx2|avx512 can lower it (never raise it
// beyond what the CPU has), so tests can exercise every path on one machine.
Isa SelectedIsa();

const char* IsaName(Isa isa);

// The variant for the selected ISA among the three builds of one loop (a loop without, say, an
// AVX2 variant passes the generic one in its place).  Called through MASKEDMHA_PICK_ISA, which
// names the x86 variants only where they exist, and once per loop: keep the result in a
// function-local static.
template <typename T>
T PickIsa(const T& generic, const T& avx2, const T& avx512) {
  switch (SelectedIsa()) {
    case Isa::kAvx512: return avx512;
    case Isa::kAvx2: return avx2;
    default: return generic;
  }
}

}  // namespace maskedmha
