// The ONNX Runtime C API versions the library is written for, and which ORT releases get which
// features.  One build serves every ORT from 1.17 on: RegisterCustomOps (register.cc) asks the
// running ORT for the highest C API version both sides know and declares the op at that version.
// cmake/OrtHeaders.cmake reads kMaxOrtApi from this file (keep the `= NN;` form).
#pragma once

#include <onnxruntime_c_api.h>

#include <cstdint>

namespace maskedmha {

// Oldest C API the library runs on: 17 (ORT 1.17) is the first with KernelContext_ParallelFor
// (every parallel phase runs on the session's intra-op pool) and with the shape-inference API
// (OrtCustomOp::InferOutputShapeFn, ShapeInferContext_*, SetSymbolicDimensions).  Nothing else
// the library calls is newer: CreateKernelV2/KernelComputeV2 (16), KernelInfoGetConstantInput_tensor
// (15), KernelInfo_GetInputCount/GetOutputCount/GetOutputName (14), the rest API 1.  An ORT
// older than this is refused at registration with a one-line error.
constexpr uint32_t kMinOrtApi = 17;

// Newest C API the library declares (OrtCustomOp::version) and calls: 21, the version of the
// headers it is built and tested with (Debian trixie libonnxruntime-dev 1.21.0+dfsg-1, pinned in
// cmake/OrtHeaders.cmake).  Newer headers also build it (the OrtApi table and OrtCustomOp are
// append-only), but the op still declares at most 21, so which header package was found does not
// change what ORT sees.  ORT refuses an op whose version is newer than itself (measured: 1.20.1
// with the op at 21 fails session creation with "CustomOpKernel ... Unsupported version '21' in
// custom op 'MaskedMHA'"), hence the negotiation down to the running release.
constexpr uint32_t kMaxOrtApi = 21;

static_assert(ORT_API_VERSION >= kMaxOrtApi,
              "maskedmha needs ONNX Runtime headers with ORT_API_VERSION >= 21 (ORT 1.21)");

// First ORT 1.x release whose shape inference survives a custom-op node with an absent optional
// input.  ORT 1.17 .. 1.23 build the OrtShapeInferContext handed to InferOutputShapeFn by reading
// the type of every node input (onnxruntime/core/session/custom_ops.cc, OrtShapeInferContext's
// constructor: `input_type->value_case()`), and ONNX gives an absent input ("" name) a null
// type: session creation dies with SIGSEGV inside ORT, before the hook is entered (gdb on 1.21.1:
// the fault reads offset 0x28 of a null pointer and compares it with 1 = TypeProto::kTensorType;
// no frame of this library on the stack).  onnxruntime PR #26199 gives absent inputs a
// placeholder instead.  Measured with the hook forced on (tests/test_ort_api.py, absent inputs):
// SIGSEGV on 1.17.3, 1.19.2, 1.20.1, 1.21.1, 1.22.1, 1.23.2; correct on 1.24.4, 1.26.0, 1.32.0.
// The crash does not depend on what the hook does, so older releases get no hook at all (ORT
// then takes the output shapes from the model's value_info, as for any op without one).
constexpr int kFirstMinorWithSafeShapeInference = 24;

}  // namespace maskedmha
