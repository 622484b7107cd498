// Drives maskedmha::TeamPolicy (ops/team_policy.h) with made-up measurements and checks its
// choices: a quiet node always runs the team and times its first kLearnCalls calls, then one in
// kSampleEvery; a contended one
// runs the cheaper mode and the other one call in kExploreEvery; a node that quiets down goes
// back to the team.  Prints "ok" (exit 0) or the first failed check (exit 1).  Built and run by
// tests/test_team_modes.py.
#include <cstdio>
#include <cstdlib>

#include "team_policy.h"

namespace {

#define CHECK(cond)                                                          \
  do {                                                                       \
    if (!(cond)) {                                                           \
      std::printf("FAILED line %d: %s\n", __LINE__, #cond);                  \
      std::exit(1);                                                          \
    }                                                                        \
  } while (0)

// n calls: how many the policy ran solo and how many it asked to time.  Each timed call is
// recorded with the given wall / cpu seconds per unit of work for its mode.
struct Tally {
  int solo = 0, measured = 0;
};
Tally Calls(maskedmha::TeamPolicy& p, int n, double team_wall, double team_cpu, double solo_wall) {
  Tally t;
  for (int i = 0; i < n; ++i) {
    const bool solo = p.ChooseSolo();
    t.solo += solo;
    if (!p.ShouldMeasure(solo)) continue;
    ++t.measured;
    if (solo) p.Record(true, solo_wall, solo_wall, 1.0);
    else p.Record(false, team_wall, team_cpu, 1.0);
  }
  return t;
}

}  // namespace

int main() {
  maskedmha::TeamPolicy p;
  // Quiet: the calling thread is on the CPU for the whole call.
  Tally t = Calls(p, 800, 1.0, 1.0, 2.0);
  CHECK(t.solo == 0);
  CHECK(t.measured == 16 + 98);  // the first 16 calls, then one in 8
  // Contended, solo cheaper: the off-CPU share (0.7) crosses the threshold within a few timed
  // calls; from then on solo runs 31 calls in 32, every team call is timed and one solo call
  // in 32.
  t = Calls(p, 64, 1.0, 0.3, 0.5);
  CHECK(t.solo > 0);
  t = Calls(p, 320, 1.0, 0.3, 0.5);
  CHECK(t.solo == 310);
  CHECK(t.measured >= 10 + 310 / 32 && t.measured <= 10 + 310 / 32 + 1);
  // Contended, the team cheaper (a large call: solo takes 3x): the team runs 31 calls in 32.
  Calls(p, 64, 1.0, 0.3, 3.0);
  t = Calls(p, 320, 1.0, 0.3, 3.0);
  CHECK(t.solo == 10);
  // Quiet again: the team calls' share falls back under the threshold; no solo call after that.
  Calls(p, 64, 1.0, 1.0, 3.0);
  t = Calls(p, 800, 1.0, 1.0, 0.5);
  CHECK(t.solo == 0);
  CHECK(t.measured == 100);
  // A fresh node does not inherit another's state; bad measurements are ignored.
  maskedmha::TeamPolicy q;
  q.Record(false, 0.0, 0.0, 1.0);
  q.Record(false, 1.0, 0.0, 0.0);
  CHECK(!q.ChooseSolo());
  std::printf("ok\n");
  return 0;
}
