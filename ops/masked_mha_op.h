// The ONNX Runtime custom-op definition of com.maskedmha::MaskedMHA (opset 1) and its kernel.
// The kernel only adapts ORT values to the ORT-free pieces: validate.h (checks), gemm.h
// (projections) and attention.h (the attention core).
#pragma once

#include <onnxruntime_cxx_api.h>

#include "validate.h"

namespace maskedmha {

struct MaskedMHAKernel {
  explicit MaskedMHAKernel(const Attributes& attrs) : attrs_(attrs) {}
  // Errors (validation, allocation, ORT calls) come back as an OrtStatus, never as an exception
  // crossing the C boundary.
  OrtStatusPtr ComputeV2(OrtKernelContext* context);

 private:
  void Compute(OrtKernelContext* context);
  Attributes attrs_;
};

// WithStatus = true: CreateKernelV2 / ComputeV2 return OrtStatus (supported since ORT 1.16).
struct MaskedMHAOp : Ort::CustomOpBase<MaskedMHAOp, MaskedMHAKernel, true> {
  OrtStatusPtr CreateKernelV2(const OrtApi& api, const OrtKernelInfo* info, void** kernel) const;

  const char* GetName() const { return "MaskedMHA"; }
  const char* GetExecutionProviderType() const { return "CPUExecutionProvider"; }

  size_t GetInputTypeCount() const { return kNumInputs; }
  ONNXTensorElementDataType GetInputType(size_t index) const;
  OrtCustomOpInputOutputCharacteristic GetInputCharacteristic(size_t index) const;

  size_t GetOutputTypeCount() const { return 2; }
  ONNXTensorElementDataType GetOutputType(size_t) const {
    return ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT;
  }
  OrtCustomOpInputOutputCharacteristic GetOutputCharacteristic(size_t index) const;
};

}  // namespace maskedmha
