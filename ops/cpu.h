// Which instruction-set variant of the inner loops to run, decided once per process at run time.
#pragma once

namespace maskedmha {

enum class Isa { kGeneric = 0, kAvx2 = 1, kAvx512 = 2 };

// The widest variant this CPU supports (AVX-512F, else AVX2+FMA, else the portable build).
// The environment variable MASKEDMHA_ISA=generic|avx2|avx512 can lower it (never raise it
// beyond what the CPU has), so tests can exercise every path on one machine.
Isa SelectedIsa();

const char* IsaName(Isa isa);

}  // namespace maskedmha
