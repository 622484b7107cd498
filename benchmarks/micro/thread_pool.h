// A persistent worker pool implementing maskedmha::Parallel for the microbenchmarks, handing
// tasks out one at a time in index order like ORT's KernelContext_ParallelFor with num_batch 0.
// Workers spin briefly and then sleep, so a timed call does not pay for thread creation.
#pragma once

#include <atomic>
#include <condition_variable>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

#include "parallel.h"

class ThreadPool final : public maskedmha::Parallel {
 public:
  explicit ThreadPool(int threads) {
    for (int t = 1; t < threads; ++t) workers_.emplace_back([this] { Work(); });
  }
  ~ThreadPool() override {
    {
      std::lock_guard<std::mutex> lock(mu_);
      stop_ = true;
      ++generation_;
    }
    cv_.notify_all();
    for (auto& w : workers_) w.join();
  }
  void For(size_t n, const std::function<void(size_t)>& fn) const override {
    if (n == 0) return;
    if (n == 1 || workers_.empty()) {
      for (size_t i = 0; i < n; ++i) fn(i);
      return;
    }
    {
      std::lock_guard<std::mutex> lock(mu_);
      fn_ = &fn;
      n_ = n;
      next_.store(0);
      active_.store(static_cast<int>(workers_.size()));
      ++generation_;
    }
    cv_.notify_all();
    Drain();
    while (active_.load() != 0) std::this_thread::yield();  // workers finished their last task
  }

 private:
  void Drain() const {
    for (size_t i; (i = next_.fetch_add(1)) < n_;) (*fn_)(i);
  }
  void Work() {
    size_t seen = 0;
    for (;;) {
      {
        std::unique_lock<std::mutex> lock(mu_);
        cv_.wait(lock, [&] { return generation_ != seen; });
        seen = generation_;
        if (stop_) return;
      }
      Drain();
      active_.fetch_sub(1);
    }
  }

  std::vector<std::thread> workers_;
  mutable std::mutex mu_;
  mutable std::condition_variable cv_;
  mutable const std::function<void(size_t)>* fn_ = nullptr;
  mutable size_t n_ = 0;
  mutable std::atomic<size_t> next_{0};
  mutable std::atomic<int> active_{0};
  mutable size_t generation_ = 0;
  bool stop_ = false;
};
