// Exceptions to ORT statuses (see status.h).
#include "status.h"

#include <onnxruntime_cxx_api.h>

#include <exception>
#include <new>

#include "validate.h"

namespace maskedmha {

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

OrtStatusPtr CurrentStatus(const OrtApi& api) {
  const Error e = CurrentError();
  return api.CreateStatus(e.code, e.message.c_str());
}

}  // namespace maskedmha
