// 64-byte aligned storage for the vectorised loops (gemm.cc, attention.cc, forward.cc, workspace.h).
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

// Scratch array that is not zero-filled on reuse (every element is written before it is read)
// and is 64-byte aligned.  Kept per thread between calls in the thread's Workspace
// (workspace.h; it only grows), so the large intermediates do not fault in fresh zeroed pages
// on every run; concurrent runs come from different threads and so get different buffers.
class Buffer {
 public:
  float* resize(size_t n) {
    if (v_.size() < n) {
      v_ = AlignedVector<float>();  // drop the old block first: no copy of its contents
      v_.resize(n);
    }
    return v_.data();
  }
  float* data() { return v_.data(); }

 private:
  AlignedVector<float> v_;
};

}  // namespace maskedmha
