// MaskedMHA kernel: reads attributes, validates inputs, prepares masks, key compaction and packed
// weights, then runs forward.h: projections (gemm) -> attention -> output projection (gemm).
//
// Data flow and why:
//  * Q/K/V projections are large GEMMs over all B*L (or B*S) rows.  For self-attention with a
//    packed weight (query, key and value are the same tensor) Q, K and V come from one GEMM with
//    the whole (3E, E) weight.
//  * With a bool key_padding_mask, keys it hides are dropped before the K/V projections
//    ("compaction"): their softmax weight is exactly 0, so cost follows the number of valid
//    tokens.  This is skipped when a float attn_mask holds NaN or +inf, which could turn a hidden
//    key into NaN (IEEE: -inf + NaN) and must then be computed like PyTorch does.
//  * Bool masks become additive 0 / -inf float masks once; float masks are used in place.
#include "masked_mha_op.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstring>
#include <functional>
#include <limits>
#include <memory>
#include <new>
#include <string>
#include <thread>
#include <vector>

#include "aligned.h"
#include "attention.h"
#include "attributes.h"
#include "forward.h"
#include "gemm.h"
#include "ort_api.h"
#include "parallel.h"
#include "simd.h"
#include "team.h"

namespace maskedmha {

namespace {

// Runs Parallel tasks on the session's intra-op pool (KernelContext_ParallelFor, ORT API >= 17).
// num_batch 0: ORT hands the tasks out one at a time to whichever thread is free.
class OrtParallel final : public Parallel {
 public:
  explicit OrtParallel(const Ort::KernelContext& ctx) : ctx_(ctx) {}
  void For(size_t n, const std::function<void(size_t)>& fn) const override {
    if (n == 0) return;
    if (n == 1) {
      fn(0);
      return;
    }
    ctx_.ParallelFor(
        [](void* user, size_t i) { (*static_cast<const std::function<void(size_t)>*>(user))(i); },
        n, 0, const_cast<void*>(static_cast<const void*>(&fn)));
  }

 private:
  const Ort::KernelContext& ctx_;
};

// The ORT status an exception stands for.  Errors cross the section in RunTeam as this value
// rather than as a std::exception_ptr: exception_ptr's reference counting needs CXXABI_1.3.13
// (GCC 11's libstdc++), which would lift the wheel's manylinux floor from 2_27 to 2_34.
struct Error {
  OrtErrorCode code = ORT_FAIL;
  std::string message;
};

// Call only inside a catch block: describes the exception being handled.
Error CurrentError() {
  try {
    throw;
  } catch (const ValidationError& e) {
    return {ORT_INVALID_ARGUMENT, e.what()};
  } catch (const Ort::Exception& e) {
    return {e.GetOrtErrorCode(), e.what()};
  } catch (const std::bad_alloc&) {
    return {ORT_FAIL, "MaskedMHA: out of memory"};
  } catch (const std::exception& e) {
    return {ORT_FAIL, std::string("MaskedMHA: ") + e.what()};
  } catch (...) {
    return {ORT_FAIL, "MaskedMHA: unknown error"};
  }
}

// Runs body(par) on the calling thread, its parallel phases shared with the pool's workers
// through a TeamParallel inside a single KernelContext_ParallelFor (why: team.h).  Each of the
// section's tasks checks its thread: the first one that runs on the calling thread leads (runs
// body), tasks on other threads wait for the leader to be running, then help until it is done.
// A worker never waits for the leader for long: if the calling thread ran none of the tasks
// (the pool can hand all of them to workers), the workers leave after 1 ms and the body runs
// afterwards with a section per phase (OrtParallel).  The calling thread leads, not whichever
// thread comes first, because the per-call buffers are kept per calling thread (forward.cc).
void RunTeam(const Ort::KernelContext& ctx, const std::function<void(const Parallel&)>& body) {
  struct Region {
    TeamParallel team;
    std::thread::id caller = std::this_thread::get_id();
    std::atomic<bool> led{false};
    const std::function<void(const Parallel&)>* body = nullptr;
    bool failed = false;
    Error error;
  } r;
  r.body = &body;
  // One task per pool thread is enough; the pool's size is not visible to a kernel, so ask for
  // as many as the machine has cores (tasks beyond the pool's threads return at once).
  // (Asked once: hardware_concurrency reads /sys on every call.)
  static const size_t tasks = std::clamp<size_t>(std::thread::hardware_concurrency(), 2, 64);
  ctx.ParallelFor(
      [](void* user, size_t) {
        Region& r = *static_cast<Region*>(user);
        if (std::this_thread::get_id() == r.caller && !r.led.exchange(true)) {
          try {
            (*r.body)(r.team);
          } catch (...) {
            r.error = CurrentError();
            r.failed = true;
          }
          r.team.Finish();
          return;
        }
        const auto start = std::chrono::steady_clock::now();
        while (!r.led.load(std::memory_order_acquire)) {
          if (std::chrono::steady_clock::now() - start > std::chrono::milliseconds(1)) return;
          std::this_thread::yield();
        }
        r.team.Help();
      },
      tasks, 0, &r);
  if (!r.led.load()) body(OrtParallel(ctx));
  // Ort::Exception carries the code, and ComputeV2 maps it back unchanged.
  if (r.failed) throw Ort::Exception(std::move(r.error.message), r.error.code);
}

// True when a float mask could turn a hidden key into NaN (so compaction is not exact).
bool HasNanOrPosInf(const float* m, size_t n, const Parallel& par) {
  std::atomic<bool> found{false};
  ForChunks(par, n, size_t{1} << 15, [&](size_t i0, size_t i1) {
    bool f = false;
    for (size_t i = i0; i < i1; ++i)
      f |= std::isnan(m[i]) || m[i] == std::numeric_limits<float>::infinity();
    if (f) found.store(true, std::memory_order_relaxed);
  });
  return found.load();
}

void BoolToAdditive(const bool* m, size_t n, float* out, const Parallel& par) {
  const float ninf = -std::numeric_limits<float>::infinity();
  ForChunks(par, n, size_t{1} << 15, [&](size_t i0, size_t i1) {
    for (size_t i = i0; i < i1; ++i) out[i] = m[i] ? ninf : 0.0f;
  });
}

// Per-call mask and compaction arrays (the projections' buffers live in forward.cc).
struct Scratch {
  Buffer kpm, am;
  std::vector<int64_t> kv_offset, key_index;
};

OrtStatusPtr ToStatus(const OrtApi& api, OrtErrorCode code, const char* msg) {
  return api.CreateStatus(code, msg);
}

}  // namespace

// ---- op definition --------------------------------------------------------------------------

ONNXTensorElementDataType MaskedMHAOp::GetInputType(size_t index) const {
  // Masks may be bool or float: accepted as "any type" here and checked in validate.cc, which
  // gives a message naming the input.
  if (index == kKeyPaddingMask || index == kAttnMask) return ONNX_TENSOR_ELEMENT_DATA_TYPE_UNDEFINED;
  return ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT;
}

OrtCustomOpInputOutputCharacteristic MaskedMHAOp::GetInputCharacteristic(size_t index) const {
  return index < kNumInputs && kInputs[index].required ? INPUT_OUTPUT_REQUIRED
                                                      : INPUT_OUTPUT_OPTIONAL;
}

OrtCustomOpInputOutputCharacteristic MaskedMHAOp::GetOutputCharacteristic(size_t index) const {
  return index == kOutput ? INPUT_OUTPUT_REQUIRED : INPUT_OUTPUT_OPTIONAL;
}

MaskedMHAOp::MaskedMHAOp() { Configure(kMinOrtApi, false); }

void MaskedMHAOp::Configure(uint32_t api_version, bool shape_inference) {
  OrtCustomOp::version = api_version;
  OrtCustomOp::InferOutputShapeFn = shape_inference ? &MaskedMHAOp::InferOutputShapes : nullptr;
}

OrtStatusPtr ORT_API_CALL MaskedMHAOp::InferOutputShapes(const OrtCustomOp*,
                                                         OrtShapeInferContext* ctx) {
  // ORT ignores the returned status.  An unknown query shape (ORT reports it as rank 0) or an
  // unnamed unknown dimension (which ORT would write back as dim_value -1) leaves the output
  // shape unknown.
  const OrtApi& api = Ort::GetApi();
  size_t n_in = 0;
  if (OrtStatus* st = api.ShapeInferContext_GetInputCount(ctx, &n_in)) return st;
  if (n_in == 0) return nullptr;
  OrtTensorTypeAndShapeInfo* q = nullptr;  // owned by ctx
  if (OrtStatus* st = api.ShapeInferContext_GetInputTypeShape(ctx, kQuery, &q)) return st;
  size_t rank = 0;
  if (OrtStatus* st = api.GetDimensionsCount(q, &rank)) return st;
  if (rank != 3) return nullptr;
  int64_t dims[3];
  const char* names[3] = {nullptr, nullptr, nullptr};
  if (OrtStatus* st = api.GetDimensions(q, dims, 3)) return st;
  if (OrtStatus* st = api.GetSymbolicDimensions(q, names, 3)) return st;
  for (int i = 0; i < 3; ++i) {
    const bool named = names[i] != nullptr && names[i][0] != '\0';
    if (named) dims[i] = -1;
    else if (dims[i] < 0) return nullptr;
    if (!named) names[i] = "";
  }
  OrtTensorTypeAndShapeInfo* out = nullptr;
  if (OrtStatus* st = api.CreateTensorTypeAndShapeInfo(&out)) return st;
  OrtStatus* st = api.SetTensorElementType(out, ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT);
  if (!st) st = api.SetDimensions(out, dims, 3);
  if (!st) st = api.SetSymbolicDimensions(out, names, 3);
  if (!st) st = api.ShapeInferContext_SetOutputTypeShape(ctx, kOutput, out);
  api.ReleaseTensorTypeAndShapeInfo(out);
  return st;
}

OrtStatusPtr MaskedMHAOp::CreateKernelV2(const OrtApi& api, const OrtKernelInfo* info,
                                         void** kernel) const {
  try {
    const Attributes a = ReadAttributes(api, info);
    Ort::ConstKernelInfo ki(info);
    // Weights stored as constant initializers can be packed once for the session.
    std::vector<const float*> constant(kNumInputs, nullptr);
    for (int i : {kInProjWeight, kKProjWeight, kVProjWeight, kOutProjWeight}) {
      if (static_cast<size_t>(i) >= ki.GetInputCount()) continue;
      int is_constant = 0;
      const OrtValue* value = nullptr;
      OrtStatus* st = api.KernelInfoGetConstantInput_tensor(info, i, &is_constant, &value);
      if (st) {
        api.ReleaseStatus(st);
        continue;
      }
      if (is_constant && value) {
        Ort::ConstValue v(value);
        if (v.IsTensor() && v.GetTensorTypeAndShapeInfo().GetElementType() ==
                                ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT)
          constant[i] = v.GetTensorData<float>();
      }
    }
    *kernel = new MaskedMHAKernel(a, constant);
    return nullptr;
  } catch (...) {
    const Error e = CurrentError();
    return ToStatus(api, e.code, e.message.c_str());
  }
}

// ---- kernel ---------------------------------------------------------------------------------

OrtStatusPtr MaskedMHAKernel::ComputeV2(OrtKernelContext* context) {
  const OrtApi& api = Ort::GetApi();
  try {
    Compute(context);
    return nullptr;
  } catch (...) {
    const Error e = CurrentError();
    return ToStatus(api, e.code, e.message.c_str());
  }
}

const PackedWeight& MaskedMHAKernel::Packed(int input, const float* w, size_t row0, size_t n,
                                            size_t k, PackedWeight* scratch) {
  if (w != nullptr && w == constant_[input]) {
    std::lock_guard<std::mutex> lock(cache_mutex_);
    auto key = std::make_tuple(input, row0, n, k);
    auto it = cache_.find(key);
    if (it == cache_.end()) {
      PackedWeight pw;
      PackWeight(w, row0, n, k, &pw);
      it = cache_.emplace(key, std::move(pw)).first;
    }
    return it->second;  // map nodes are stable and never erased
  }
  PackWeight(w, row0, n, k, scratch);
  return *scratch;
}

void MaskedMHAKernel::Compute(OrtKernelContext* context) {
  Ort::KernelContext ctx(context);
  RunTeam(ctx, [&](const Parallel& par) { Run(ctx, par); });
}

void MaskedMHAKernel::Run(Ort::KernelContext& ctx, const Parallel& par) {

  // Describe the inputs (absent optional inputs have a null value).
  std::vector<TensorDesc> desc(kNumInputs);
  std::vector<Ort::ConstValue> val(kNumInputs, Ort::ConstValue(nullptr));
  const size_t n_in = ctx.GetInputCount();
  for (int i = 0; i < kNumInputs; ++i) {
    if (static_cast<size_t>(i) >= n_in) continue;
    val[i] = ctx.GetInput(i);
    if (!val[i]) continue;
    desc[i].present = true;
    desc[i].is_tensor = val[i].IsTensor();
    if (!desc[i].is_tensor) continue;
    auto info = val[i].GetTensorTypeAndShapeInfo();
    desc[i].elem_type = static_cast<int>(info.GetElementType());
    desc[i].shape = info.GetShape();
  }
  const Problem p = Validate(desc, attrs_);
  auto fptr = [&](int i) -> const float* {
    return desc[i].present ? val[i].GetTensorData<float>() : nullptr;
  };

  const int64_t B = p.B, L = p.L, S = p.S, E = p.E, H = p.H, D = p.D;
  float* out = ctx.GetOutput(kOutput, {B, L, E}).GetTensorMutableData<float>();
  float* weights_out = nullptr;
  if (attrs_.need_weights) {
    std::vector<int64_t> wshape = attrs_.average_weights ? std::vector<int64_t>{B, L, p.Sp}
                                                         : std::vector<int64_t>{B, H, L, p.Sp};
    weights_out = ctx.GetOutput(kAttnWeights, wshape).GetTensorMutableData<float>();
  }
  if (B == 0 || L == 0) return;  // nothing to attend from: empty outputs

  const float* query = fptr(kQuery);
  const float* key = fptr(kKey);
  const float* value = fptr(kValue);
  const float* w_in = fptr(kInProjWeight);
  const float* b_in = fptr(kInProjBias);

  // Per calling thread, reused across calls (see Buffer).  A reference: tasks run on pool
  // threads, where the name would mean their own copy.
  thread_local Scratch scratch_tl;
  Scratch& sc = scratch_tl;

  const bool* kpm_bool =
      p.kpm == MaskKind::kBool ? val[kKeyPaddingMask].GetTensorData<bool>() : nullptr;
  const float* am = nullptr;
  const size_t am_n = static_cast<size_t>((p.attn_mask_3d ? B * H : 1) * L * S);
  if (p.attn_mask == MaskKind::kBool) {
    float* buf = sc.am.resize(am_n);
    BoolToAdditive(val[kAttnMask].GetTensorData<bool>(), am_n, buf, par);
    am = buf;
  } else if (p.attn_mask == MaskKind::kFloat) {
    am = fptr(kAttnMask);
  }

  // Compaction of keys hidden by a bool key_padding_mask.  Not exact either when a hidden key or
  // value row holds NaN/Inf: PyTorch then gets NaN (score NaN + -inf, or weight 0 * NaN).
  auto hidden_rows_finite = [&]() {
    std::atomic<bool> ok{true};
    const size_t rows = static_cast<size_t>(B * S);
    const size_t width = static_cast<size_t>(p.Kd + p.Vd);
    ForChunks(par, rows, std::max<size_t>(1, (size_t{1} << 15) / std::max<size_t>(width, 1)),
              [&](size_t r0, size_t r1) {
                bool f = true;
                for (size_t r = r0; r < r1 && f; ++r) {
                  if (!kpm_bool[r]) continue;
                  const float* kr = key + r * p.Kd;
                  const float* vr = value + r * p.Vd;
                  f = simd::AllFinite<simd::V4>(kr, p.Kd) && simd::AllFinite<simd::V4>(vr, p.Vd);
                }
                if (!f) ok.store(false, std::memory_order_relaxed);
              });
    return ok.load();
  };
  const bool compact = kpm_bool && S > 0 &&
                       !(p.attn_mask == MaskKind::kFloat && HasNanOrPosInf(am, am_n, par)) &&
                       hidden_rows_finite();
  // Additive key_padding_mask (only needed when the keys are not compacted).
  const float* kpm = nullptr;
  if (kpm_bool && !compact) {
    float* buf = sc.kpm.resize(static_cast<size_t>(B * S));
    BoolToAdditive(kpm_bool, static_cast<size_t>(B * S), buf, par);
    kpm = buf;
  } else if (p.kpm == MaskKind::kFloat) {
    kpm = fptr(kKeyPaddingMask);
  }
  std::vector<int64_t>& kv_offset = sc.kv_offset;
  std::vector<int64_t>& key_index = sc.key_index;
  if (compact) {
    kv_offset.resize(B + 1);
    key_index.clear();
    key_index.reserve(static_cast<size_t>(B * S));
    for (int64_t b = 0; b < B; ++b) {
      kv_offset[b] = static_cast<int64_t>(key_index.size());
      for (int64_t j = 0; j < S; ++j)
        if (!kpm_bool[b * S + j]) key_index.push_back(j);
    }
    kv_offset[B] = static_cast<int64_t>(key_index.size());
  }
  // Everything the forward pass needs, with the weights packed (once per session when they are
  // constant initializers).
  ForwardPlan plan;
  plan.B = B; plan.L = L; plan.S = S; plan.E = E; plan.H = H; plan.D = D;
  plan.Kd = p.Kd; plan.Vd = p.Vd; plan.Sp = p.Sp;
  plan.query = query; plan.key = key; plan.value = value;
  plan.in_bias = b_in;
  plan.out_bias = fptr(kOutProjBias);
  plan.bias_k = fptr(kBiasK);
  plan.bias_v = fptr(kBiasV);
  const bool same_kv = key == value && p.Kd == p.Vd;
  const bool self_attn = p.packed && !compact && same_kv && query == key && L == S;
  PackedWeight pw_qkv, pw_q, pw_kv, pw_k, pw_v, pw_out;  // used only for non-constant weights
  if (self_attn) {
    plan.w_qkv = &Packed(kInProjWeight, w_in, 0, 3 * E, E, &pw_qkv);
  } else {
    plan.w_q = &Packed(kInProjWeight, w_in, 0, E, E, &pw_q);
    if (p.packed && same_kv) {
      plan.w_kv = &Packed(kInProjWeight, w_in, E, 2 * E, E, &pw_kv);  // rows [E, 3E): Wk, Wv
    } else if (p.packed) {
      plan.w_k = &Packed(kInProjWeight, w_in, E, E, p.Kd, &pw_k);
      plan.w_v = &Packed(kInProjWeight, w_in, 2 * E, E, p.Vd, &pw_v);
    } else {
      plan.w_k = &Packed(kKProjWeight, fptr(kKProjWeight), 0, E, p.Kd, &pw_k);
      plan.w_v = &Packed(kVProjWeight, fptr(kVProjWeight), 0, E, p.Vd, &pw_v);
    }
  }
  plan.w_out = &Packed(kOutProjWeight, fptr(kOutProjWeight), 0, E, E, &pw_out);
  if (compact) {
    plan.kv_offset = kv_offset.data();
    plan.key_index = key_index.data();
  }
  plan.kpm = compact ? nullptr : kpm;  // compacted keys are all unmasked by key_padding_mask
  plan.attn_mask = am;
  plan.attn_mask_3d = p.attn_mask_3d;
  plan.causal = attrs_.is_causal;
  plan.zero_attn = attrs_.add_zero_attn;
  plan.nan_rows = attrs_.nan_rows;
  plan.out = out;
  plan.weights = weights_out;
  plan.average_weights = attrs_.average_weights;

  Forward(plan, par);
}

}  // namespace maskedmha
