// The ONNX Runtime custom-op definition of com.maskedmha::MaskedMHA (masked_mha_op.h): input and
// output types from schema.h, graph-level shape inference, and kernel creation (attributes read
// and checked by attributes.h, constant weights found).  The kernel's call is in kernel.cc.
#include "masked_mha_op.h"

#include <vector>

#include "attributes.h"
#include "ort_api.h"
#include "status.h"

namespace maskedmha {

ONNXTensorElementDataType MaskedMHAOp::GetInputType(size_t index) const {
  // Masks may be bool or float: accepted as "any type" here and checked in validate.cc, which
  // gives a message naming the input.
  if (index == kKeyPaddingMask || index == kAttnMask) return ONNX_TENSOR_ELEMENT_DATA_TYPE_UNDEFINED;
  if (index == kSequenceOffsets) return ONNX_TENSOR_ELEMENT_DATA_TYPE_INT64;
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
  // (B, L, E), or (T, E) in the variable-length mode: the output has query's shape either way.
  if (rank != 3 && rank != 2) return nullptr;
  int64_t dims[3];
  const char* names[3] = {nullptr, nullptr, nullptr};
  if (OrtStatus* st = api.GetDimensions(q, dims, rank)) return st;
  if (OrtStatus* st = api.GetSymbolicDimensions(q, names, rank)) return st;
  for (size_t i = 0; i < rank; ++i) {
    const bool named = names[i] != nullptr && names[i][0] != '\0';
    if (named) dims[i] = -1;
    else if (dims[i] < 0) return nullptr;
    if (!named) names[i] = "";
  }
  OrtTensorTypeAndShapeInfo* out = nullptr;
  if (OrtStatus* st = api.CreateTensorTypeAndShapeInfo(&out)) return st;
  OrtStatus* st = api.SetTensorElementType(out, ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT);
  if (!st) st = api.SetDimensions(out, dims, rank);
  if (!st) st = api.SetSymbolicDimensions(out, names, rank);
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
    return CurrentStatus(api);
  }
}

}  // namespace maskedmha
