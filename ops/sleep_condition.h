// A condition variable on pthread_cond_t, for the team's sleeping threads (team.h).
//
// Why not std::condition_variable: with GCC >= 12's libstdc++, wait(unique_lock<mutex>&) binds
// the symbol version GLIBCXX_3.4.30, which raised the wheel from manylinux_2_27 to
// manylinux_2_35 (auditwheel, tests/test_wheel.py).  pthread_cond_wait/broadcast are glibc
// 2.3.2 symbols, and std::mutex is a pthread mutex (native_handle), so this waits on the same
// mutex the callers lock with std::unique_lock.
#pragma once

#include <pthread.h>

#include <mutex>

namespace maskedmha {

class SleepCondition {
 public:
  SleepCondition() = default;
  SleepCondition(const SleepCondition&) = delete;
  SleepCondition& operator=(const SleepCondition&) = delete;
  ~SleepCondition() { pthread_cond_destroy(&cond_); }

  // Waits (the lock held on return) until pred() is true, re-checked after every wake-up.
  template <class Pred>
  void wait(std::unique_lock<std::mutex>& lock, Pred pred) {
    while (!pred()) pthread_cond_wait(&cond_, lock.mutex()->native_handle());
  }

  void notify_all() { pthread_cond_broadcast(&cond_); }

 private:
  pthread_cond_t cond_ = PTHREAD_COND_INITIALIZER;
};

}  // namespace maskedmha
