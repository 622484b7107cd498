// Run-time CPU feature selection (see cpu.h).  No -march flags are used for the build: the
// variants are compiled with per-function target attributes and picked here.
#include "cpu.h"

#include <cstdlib>
#include <cstring>

namespace maskedmha {

namespace {

Isa Detect() {
  Isa best = Isa::kGeneric;
#ifdef MASKEDMHA_X86
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f")) best = Isa::kAvx512;
  else if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) best = Isa::kAvx2;
#endif
  const char* env = std::getenv("MASKEDMHA_ISA");
  if (env != nullptr) {
    Isa want = best;
    if (std::strcmp(env, "generic") == 0) want = Isa::kGeneric;
    else if (std::strcmp(env, "avx2") == 0) want = Isa::kAvx2;
    else if (std::strcmp(env, "avx512") == 0) want = Isa::kAvx512;
    if (static_cast<int>(want) < static_cast<int>(best)) best = want;
  }
  return best;
}

}  // namespace

Isa SelectedIsa() {
  static const Isa isa = Detect();
  return isa;
}

const char* IsaName(Isa isa) {
  switch (isa) {
    case Isa::kAvx512: return "avx512";
    case Isa::kAvx2: return "avx2";
    default: return "generic";
  }
}

}  // namespace maskedmha
