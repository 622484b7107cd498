// 64-byte aligned std::vector storage for the vectorised loops (gemm.cc, attention.cc).
#pragma once

#include <cstddef>
#include <new>
#include <vector>

namespace maskedmha {

// 64-byte aligned storage for vector data: with the default allocator a large block starts 16
// bytes past a page boundary, so every 64-byte vector load of it straddled two cache lines.
template <typename T>
struct AlignedAllocator {
  using value_type = T;
  static constexpr std::align_val_t kAlign{64};
  AlignedAllocator() = default;
  template <typename U>
  AlignedAllocator(const AlignedAllocator<U>&) {}
  T* allocate(size_t n) { return static_cast<T*>(::operator new(n * sizeof(T), kAlign)); }
  void deallocate(T* p, size_t) { ::operator delete(p, kAlign); }
  template <typename U>
  bool operator==(const AlignedAllocator<U>&) const { return true; }
  template <typename U>
  bool operator!=(const AlignedAllocator<U>&) const { return false; }
};
template <typename T>
using AlignedVector = std::vector<T, AlignedAllocator<T>>;

}  // namespace maskedmha
