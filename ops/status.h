// Exceptions to ORT statuses: nothing thrown inside the library crosses the C boundary.
#pragma once

#include <onnxruntime_c_api.h>

#include <string>

namespace maskedmha {

// The ORT status an exception stands for.  Errors cross the section in RunTeam (team_ort.cc) as
// this value rather than as a std::exception_ptr: exception_ptr's reference counting needs
// CXXABI_1.3.13 (GCC 11's libstdc++), which would lift the wheel's manylinux floor from 2_27 to
// 2_34.
struct Error {
  OrtErrorCode code = ORT_FAIL;
  std::string message;
};

// Call only inside a catch block: describes the exception being handled (ValidationError ->
// ORT_INVALID_ARGUMENT, Ort::Exception -> its code, bad_alloc -> out of memory, ...).
Error CurrentError();

// Call only inside a catch block: CurrentError() as a new OrtStatus.
OrtStatusPtr CurrentStatus(const OrtApi& api);

}  // namespace maskedmha
