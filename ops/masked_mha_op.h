// The ONNX Runtime custom-op definition of com.maskedmha::MaskedMHA (opset 1, schema.h) and its
// kernel.  The kernel only adapts ORT values to the ORT-free pieces: validate.h (checks),
// forward.h (projections and attention).
#pragma once

#include <onnxruntime_cxx_api.h>

#include <map>
#include <mutex>
#include <tuple>
#include <vector>

#include "gemm.h"
#include "parallel.h"
#include "schema.h"
#include "team_policy.h"
#include "validate.h"

namespace maskedmha {

struct ForwardPlan;   // forward.h
struct KernelInputs;  // kernel.cc: the node's inputs as ORT gives them

// Weights packed for one call (those that are not constant initializers).
struct WeightScratch {
  PackedWeight qkv, q, kv, k, v, out;
};

// The kernel of one node (kernel.cc).
struct MaskedMHAKernel {
  // constant_weights[i]: data of input i when it is a constant initializer (else null).
  MaskedMHAKernel(const Attributes& attrs, const std::vector<const float*>& constant_weights)
      : attrs_(attrs), constant_(constant_weights) {}
  // Errors (validation, allocation, ORT calls) come back as an OrtStatus, never as an exception
  // crossing the C boundary.
  OrtStatusPtr ComputeV2(OrtKernelContext* context);

 private:
  // The call itself, its parallel phases on `par`.
  void Run(Ort::KernelContext& ctx, const Parallel& par);
  // Sets plan's packed weights (w_qkv, or w_q with w_kv or w_k + w_v; w_out).
  void SelectWeights(const Problem& p, const KernelInputs& in, bool compact, ForwardPlan* plan,
                     WeightScratch* ws);
  // Rows [row0, row0 + n) of weight input `input` (k columns) packed for Gemm.  Weights that are
  // constant initializers are packed once and kept (Compute may run concurrently, hence the
  // lock); others are packed into *scratch on every call.
  const PackedWeight& Packed(int input, const float* w, size_t row0, size_t n, size_t k,
                             PackedWeight* scratch);

  Attributes attrs_;
  std::vector<const float*> constant_;
  TeamPolicy team_policy_;  // team or solo per call (team_policy.h)
  std::mutex cache_mutex_;
  std::map<std::tuple<int, size_t, size_t, size_t>, PackedWeight> cache_;
};

// WithStatus = true: CreateKernelV2 / ComputeV2 return OrtStatus (supported since ORT 1.16).
struct MaskedMHAOp : Ort::CustomOpBase<MaskedMHAOp, MaskedMHAKernel, true> {
  OrtStatusPtr CreateKernelV2(const OrtApi& api, const OrtKernelInfo* info, void** kernel) const;

  const char* GetName() const { return kOpType; }
  const char* GetExecutionProviderType() const { return "CPUExecutionProvider"; }

  size_t GetInputTypeCount() const { return kNumInputs; }
  ONNXTensorElementDataType GetInputType(size_t index) const;
  OrtCustomOpInputOutputCharacteristic GetInputCharacteristic(size_t index) const;

  size_t GetOutputTypeCount() const { return kNumOutputs; }
  ONNXTensorElementDataType GetOutputType(size_t) const {
    return ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT;
  }
  OrtCustomOpInputOutputCharacteristic GetOutputCharacteristic(size_t index) const;

  // Graph-level shape inference: output 0 gets query's shape.  Set as the raw
  // OrtCustomOp::InferOutputShapeFn (ORT calls it when OrtCustomOp::version >= 17) rather than
  // through Ort::ShapeInferContext, whose SetOutputShape in the 1.21 headers marks symbolic dims
  // with -2, which newer ORT rejects.  Output 1 is left to the model's value_info: ORT's context
  // does not say how many outputs the node has, and setting output 1 on a node without one
  // indexes past ORT's output list.
  static OrtStatusPtr ORT_API_CALL InferOutputShapes(const OrtCustomOp* op, OrtShapeInferContext* ctx);

  // Until Configure: declared at kMinOrtApi, without the shape-inference hook.
  MaskedMHAOp();
  // Called once, before ORT first sees the op (register.cc): declare the op at the C API
  // version negotiated with the running ORT (CustomOpBase would declare ORT_API_VERSION, which
  // an older ORT refuses), and give ORT the shape-inference hook only where that release
  // handles it (kFirstMinorWithSafeShapeInference in ort_api.h).
  void Configure(uint32_t api_version, bool shape_inference);
};

}  // namespace maskedmha
