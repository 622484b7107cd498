// Stress test of TeamParallel (ops/team.h), built and run by tests/test_team.py (under
// ThreadSanitizer where the compiler has it).  Many short calls, each with 0-3 helpers that
// join at different moments (before the first phase, during the call, after it ended), phases of
// 1-60 items: every item must run exactly once per phase, and the leader must see every item's
// write when For returns.  Prints "ok <calls>" or the first failure; exit code 0 only if ok.
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <thread>
#include <vector>

#include "team.h"

int main(int argc, char** argv) {
  const int calls = argc > 1 ? std::atoi(argv[1]) : 2000;
  for (int call = 0; call < calls; ++call) {
    maskedmha::TeamParallel team;
    const int helpers = call % 4;
    const int late = call % 3;  // 0: helpers start first, 1: after phase 1, 2: after the call
    std::vector<std::thread> threads;
    auto start_helpers = [&] {
      for (int h = 0; h < helpers; ++h) threads.emplace_back([&team] { team.Help(); });
    };
    if (late == 0) start_helpers();
    for (int phase = 0; phase < 8; ++phase) {
      const size_t n = 1 + static_cast<size_t>(call * 7 + phase * 13) % 60;
      std::vector<int> hits(n, 0);  // plain ints: TSan flags a missing happens-before
      const std::function<void(size_t)> fn = [&hits](size_t i) { hits[i] += 1; };
      team.For(n, fn);
      for (size_t i = 0; i < n; ++i)
        if (hits[i] != 1) {
          std::printf("call %d phase %d: item %zu ran %d times\n", call, phase, i, hits[i]);
          return 1;
        }
      if (phase == 0 && late == 1) start_helpers();
    }
    team.Finish();
    if (late == 2) start_helpers();  // must return at once
    for (auto& t : threads) t.join();
  }
  std::printf("ok %d\n", calls);
  return 0;
}
