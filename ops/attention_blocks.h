// The block sizes of the attention core (attention.cc, attention_keys.cc, softmax.h) and the
// float constants its masks rely on.
#pragma once

#include <cstdint>
#include <limits>

namespace maskedmha {

constexpr int64_t kQB = 32;  // query rows per task
constexpr int64_t kKB = 128;  // keys per block (L = 128 then needs no softmax rescaling)
// Key counts are padded to a multiple of this (a whole number of score chunks of every ISA;
// the last block of a row only computes the chunks that hold keys).
constexpr int64_t kTPad = 32;
static_assert(kKB % kTPad == 0, "blocks are whole chunks");

constexpr float kNegInf = -std::numeric_limits<float>::infinity();
constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();

}  // namespace maskedmha
