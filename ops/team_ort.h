// The kernel's parallel phases on the session's intra-op pool: one TeamParallel section (team.h)
// per call, inside a single KernelContext_ParallelFor (ORT API >= 17).
#pragma once

#include <onnxruntime_cxx_api.h>

#include <functional>

#include "parallel.h"
#include "team_policy.h"

namespace maskedmha {

// Runs body(par) on the calling thread, its parallel phases shared with the pool's workers.
// An exception thrown by body is rethrown on the calling thread as an Ort::Exception with the
// status code it stands for (status.h).
void RunTeam(const Ort::KernelContext& ctx, const std::function<void(const Parallel&)>& body);

// The same, or body run by the calling thread alone (no pool section), as `policy` chooses
// (team_policy.h; MASKEDMHA_TEAM forces either); the call's times are recorded into it.  work():
// the call's size in any unit proportional to its arithmetic, the same for every call of a node
// (asked only for the calls that are timed).
void RunTeamOrSolo(const Ort::KernelContext& ctx, TeamPolicy& policy,
                   const std::function<double()>& work,
                   const std::function<void(const Parallel&)>& body);

}  // namespace maskedmha
