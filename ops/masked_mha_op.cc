// MaskedMHA kernel: reads attributes, validates inputs, and runs
//   projections (gemm) -> attention (attention) -> output projection (gemm).
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
#include <cmath>
#include <cstring>
#include <limits>
#include <memory>
#include <string>
#include <vector>

#include "aligned.h"
#include "attention.h"
#include "gemm.h"
#include "parallel.h"

namespace maskedmha {

namespace {

// Runs Parallel tasks on the session's intra-op pool (KernelContext_ParallelFor, ORT API >= 17).
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

// Attribute readers with defaults (absent attribute -> default; wrong type -> error).
int64_t AttrInt(const OrtApi& api, const OrtKernelInfo* info, const char* name, int64_t dflt,
                bool* found = nullptr) {
  int64_t v = 0;
  OrtStatus* st = api.KernelInfoGetAttribute_int64(info, name, &v);
  if (found) *found = (st == nullptr);
  if (st) {
    api.ReleaseStatus(st);
    return dflt;
  }
  return v;
}

std::string AttrString(const OrtApi& api, const OrtKernelInfo* info, const char* name,
                       const std::string& dflt) {
  size_t size = 0;
  OrtStatus* st = api.KernelInfoGetAttribute_string(info, name, nullptr, &size);
  if (st) {
    api.ReleaseStatus(st);
    return dflt;
  }
  std::string s(size, '\0');
  st = api.KernelInfoGetAttribute_string(info, name, &s[0], &size);
  if (st) {
    api.ReleaseStatus(st);
    return dflt;
  }
  if (!s.empty() && s.back() == '\0') s.pop_back();
  return s;
}

bool Flag(const OrtApi& api, const OrtKernelInfo* info, const char* name, int64_t dflt) {
  const int64_t v = AttrInt(api, info, name, dflt);
  if (v != 0 && v != 1)
    throw ValidationError(std::string("MaskedMHA: attribute '") + name + "' must be 0 or 1, got " +
                          std::to_string(v));
  return v == 1;
}

// Splits [0, n) into at most `max_tasks` chunks of at least `grain` elements and runs
// fn(begin, end) for each on the pool (one chunk: on the calling thread).  For the setup loops
// (mask conversion, NaN checks, row gathers), which are too short to be worth a pool dispatch
// for small inputs.
template <typename Fn>
void ForChunks(const Parallel& par, size_t n, size_t grain, Fn&& fn) {
  constexpr size_t kMaxTasks = 16;
  const size_t tasks = std::max<size_t>(1, std::min(kMaxTasks, n / std::max<size_t>(grain, 1)));
  if (tasks == 1) {
    if (n) fn(size_t{0}, n);
    return;
  }
  par.For(tasks, [&](size_t t) { fn(t * n / tasks, (t + 1) * n / tasks); });
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

// Scratch array that is not zero-filled on reuse (every element is written before it is read)
// and is 64-byte aligned.  Kept per calling thread between calls (it only grows), so the large
// intermediates do not fault in fresh zeroed pages on every run; concurrent runs of one kernel
// come from different threads and so get different buffers.
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

struct Scratch {
  Buffer qkv, qbuf, kbuf, vbuf, kg, vg, attn, per_head, kpm, am;
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
  switch (index) {
    case kQuery: case kKey: case kValue: case kInProjWeight: case kOutProjWeight:
      return INPUT_OUTPUT_REQUIRED;
    default:
      return INPUT_OUTPUT_OPTIONAL;
  }
}

OrtCustomOpInputOutputCharacteristic MaskedMHAOp::GetOutputCharacteristic(size_t index) const {
  return index == 0 ? INPUT_OUTPUT_REQUIRED : INPUT_OUTPUT_OPTIONAL;
}

MaskedMHAOp::MaskedMHAOp() { OrtCustomOp::InferOutputShapeFn = &MaskedMHAOp::InferOutputShapes; }

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
  if (!st) st = api.ShapeInferContext_SetOutputTypeShape(ctx, 0, out);
  api.ReleaseTensorTypeAndShapeInfo(out);
  return st;
}

OrtStatusPtr MaskedMHAOp::CreateKernelV2(const OrtApi& api, const OrtKernelInfo* info,
                                         void** kernel) const {
  try {
    Attributes a;
    bool found = false;
    a.num_heads = AttrInt(api, info, "num_heads", 0, &found);
    if (!found) throw ValidationError("MaskedMHA: attribute 'num_heads' is required");
    a.is_causal = Flag(api, info, "is_causal", 0);
    a.add_zero_attn = Flag(api, info, "add_zero_attn", 0);
    a.average_weights = Flag(api, info, "average_attn_weights", 1);
    const std::string fmr = AttrString(api, info, "fully_masked_row", "zero");
    if (fmr != "zero" && fmr != "nan")
      throw ValidationError("MaskedMHA: attribute 'fully_masked_row' must be \"zero\" or \"nan\", got \"" +
                            fmr + "\"");
    a.nan_rows = fmr == "nan";
    ValidateAttributes(a);
    // need_weights = the node has a (non-empty) second output.
    Ort::ConstKernelInfo ki(info);
    a.need_weights = ki.GetOutputCount() >= 2 && !ki.GetOutputName(1).empty();
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
  } catch (const ValidationError& e) {
    return ToStatus(api, ORT_INVALID_ARGUMENT, e.what());
  } catch (const Ort::Exception& e) {
    return ToStatus(api, e.GetOrtErrorCode(), e.what());
  } catch (const std::exception& e) {
    return ToStatus(api, ORT_FAIL, (std::string("MaskedMHA: ") + e.what()).c_str());
  }
}

// ---- kernel ---------------------------------------------------------------------------------

OrtStatusPtr MaskedMHAKernel::ComputeV2(OrtKernelContext* context) {
  const OrtApi& api = Ort::GetApi();
  try {
    Compute(context);
    return nullptr;
  } catch (const ValidationError& e) {
    return ToStatus(api, ORT_INVALID_ARGUMENT, e.what());
  } catch (const Ort::Exception& e) {
    return ToStatus(api, e.GetOrtErrorCode(), e.what());
  } catch (const std::bad_alloc&) {
    return ToStatus(api, ORT_FAIL, "MaskedMHA: out of memory");
  } catch (const std::exception& e) {
    return ToStatus(api, ORT_FAIL, (std::string("MaskedMHA: ") + e.what()).c_str());
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
  OrtParallel par(ctx);

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
  float* out = ctx.GetOutput(0, {B, L, E}).GetTensorMutableData<float>();
  float* weights_out = nullptr;
  if (attrs_.need_weights) {
    std::vector<int64_t> wshape = attrs_.average_weights ? std::vector<int64_t>{B, L, p.Sp}
                                                         : std::vector<int64_t>{B, H, L, p.Sp};
    weights_out = ctx.GetOutput(1, wshape).GetTensorMutableData<float>();
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
                  // Finite iff x - x == 0 (NaN and +-inf give NaN); no early exit inside a row.
                  float acc = 0.0f;
                  for (int64_t c = 0; c < p.Kd; ++c) acc += kr[c] - kr[c];
                  for (int64_t c = 0; c < p.Vd; ++c) acc += vr[c] - vr[c];
                  f = acc == 0.0f;
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
  int64_t n_keys = B * S;
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
    n_keys = kv_offset[B];
  }
  // Rows of key/value to project: the originals, or a gathered copy of the surviving rows.
  auto gather = [&](const float* src, int64_t width, Buffer* buf) -> const float* {
    if (!compact) return src;
    float* dst = buf->resize(static_cast<size_t>(n_keys * width));
    if (width == 0 || n_keys == 0) return dst;  // nothing to copy (memcpy must not see null)
    ForChunks(par, static_cast<size_t>(n_keys),
              std::max<size_t>(1, (size_t{1} << 14) / static_cast<size_t>(width)),
              [&](size_t r0, size_t r1) {
                // Batch of row r0: the last b with kv_offset[b] <= r0.
                int64_t b = std::upper_bound(kv_offset.begin(), kv_offset.end(),
                                             static_cast<int64_t>(r0)) - kv_offset.begin() - 1;
                for (int64_t r = static_cast<int64_t>(r0); r < static_cast<int64_t>(r1); ++r) {
                  while (r >= kv_offset[b + 1]) ++b;
                  std::memcpy(dst + r * width, src + (b * S + key_index[r]) * width,
                              static_cast<size_t>(width) * sizeof(float));
                }
              });
    return dst;
  };

  // Projections.
  const bool same_kv = key == value && p.Kd == p.Vd;
  const bool self_attn = p.packed && !compact && same_kv && query == key && L == S;
  Buffer &qkv = sc.qkv, &qbuf = sc.qbuf, &kbuf = sc.kbuf, &vbuf = sc.vbuf, &kg = sc.kg,
         &vg = sc.vg;
  PackedWeight pw;
  AttentionArgs a;
  if (self_attn) {
    qkv.resize(static_cast<size_t>(B * L * 3 * E));
    Gemm(query, E, B * L, Packed(kInProjWeight, w_in, 0, 3 * E, E, &pw), b_in, qkv.data(),
         3 * E, par);
    a.q = qkv.data();
    a.k = qkv.data() + E;
    a.v = qkv.data() + 2 * E;
    a.q_stride = a.k_stride = a.v_stride = 3 * E;
  } else {
    qbuf.resize(static_cast<size_t>(B * L * E));
    Gemm(query, E, B * L, Packed(kInProjWeight, w_in, 0, E, E, &pw), b_in, qbuf.data(), E, par);
    a.q = qbuf.data();
    a.q_stride = E;
    const float* b_k = b_in ? b_in + E : nullptr;
    const float* b_v = b_in ? b_in + 2 * E : nullptr;
    if (p.packed && same_kv) {
      // Wk and Wv are adjacent rows of the packed weight: one GEMM with N = 2E.
      const float* kin = gather(key, E, &kg);
      kbuf.resize(static_cast<size_t>(n_keys * 2 * E));
      Gemm(kin, E, n_keys, Packed(kInProjWeight, w_in, E, 2 * E, E, &pw), b_k, kbuf.data(),
           2 * E, par);
      a.k = kbuf.data();
      a.v = kbuf.data() + E;
      a.k_stride = a.v_stride = 2 * E;
    } else {
      // Packed weight: Wk / Wv are rows [E, 2E) / [2E, 3E) of input 3.
      const int ik = p.packed ? kInProjWeight : kKProjWeight;
      const int iv = p.packed ? kInProjWeight : kVProjWeight;
      const float* wk = p.packed ? w_in : fptr(kKProjWeight);
      const float* wv = p.packed ? w_in : fptr(kVProjWeight);
      const size_t rk = p.packed ? E : 0, rv = p.packed ? 2 * E : 0;
      const float* kin = gather(key, p.Kd, &kg);
      const float* vin = same_kv ? kin : gather(value, p.Vd, &vg);
      kbuf.resize(static_cast<size_t>(n_keys * E));
      vbuf.resize(static_cast<size_t>(n_keys * E));
      Gemm(kin, p.Kd, n_keys, Packed(ik, wk, rk, E, p.Kd, &pw), b_k, kbuf.data(), E, par);
      Gemm(vin, p.Vd, n_keys, Packed(iv, wv, rv, E, p.Vd, &pw), b_v, vbuf.data(), E, par);
      a.k = kbuf.data();
      a.v = vbuf.data();
      a.k_stride = a.v_stride = E;
    }
  }

  // Attention.
  Buffer &attn = sc.attn, &per_head = sc.per_head;
  attn.resize(static_cast<size_t>(B * L * E));
  a.B = B; a.L = L; a.S = S; a.H = H; a.D = D;
  a.scale = 1.0f / std::sqrt(static_cast<float>(D));
  if (compact) {
    a.kv_offset = kv_offset.data();
    a.key_index = key_index.data();
  }
  a.bias_k = fptr(kBiasK);
  a.bias_v = fptr(kBiasV);
  a.zero_attn = attrs_.add_zero_attn;
  a.kpm = compact ? nullptr : kpm;  // compacted keys are all unmasked by key_padding_mask
  a.attn_mask = am;
  a.attn_mask_3d = p.attn_mask_3d;
  a.causal = attrs_.is_causal;
  a.nan_rows = attrs_.nan_rows;
  a.out = attn.data();
  a.out_stride = E;
  if (weights_out) {
    if (attrs_.average_weights) {
      per_head.resize(static_cast<size_t>(B * H * L * p.Sp));
      a.weights = per_head.data();
    } else {
      a.weights = weights_out;
    }
  }
  Attention(a, par);
  if (weights_out && attrs_.average_weights)
    AverageHeads(per_head.data(), B, H, L, p.Sp, weights_out, par);

  // Output projection straight into the output tensor.
  Gemm(attn.data(), E, B * L, Packed(kOutProjWeight, fptr(kOutProjWeight), 0, E, E, &pw),
       fptr(kOutProjBias), out, E, par);
}

}  // namespace maskedmha
