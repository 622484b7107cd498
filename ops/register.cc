// Library entry point: ORT calls RegisterCustomOps(options, api_base) when the library is
// registered (SessionOptions.register_custom_ops_library / RegisterCustomOpsLibrary).
//
// We link nothing from ORT (built with ORT_API_MANUAL_INIT): the C API table comes from api_base,
// at the version of the headers we were compiled with, which any newer ORT also provides.  The
// domain and op objects must outlive every session that uses them, so they live in a static
// container for the life of the process (ORT does not take ownership of them).
#include <mutex>
#include <string>

#include "masked_mha_op.h"

namespace {

constexpr const char* kDomain = "com.maskedmha";

struct Registry {
  std::mutex mutex;
  maskedmha::MaskedMHAOp op;
  std::vector<Ort::CustomOpDomain> domains;  // one per registration, kept alive
};

Registry& GetRegistry() {
  static Registry* r = new Registry();  // never destroyed: sessions may outlive static teardown
  return *r;
}

}  // namespace

extern "C" __attribute__((visibility("default"))) OrtStatus* ORT_API_CALL
RegisterCustomOps(OrtSessionOptions* options, const OrtApiBase* api_base) {
  if (api_base == nullptr) return nullptr;  // cannot even report an error without the API
  const OrtApi* api = api_base->GetApi(ORT_API_VERSION);
  if (api == nullptr) {
    // The running ORT is older than our headers: report through the oldest API we can get.
    const OrtApi* old = api_base->GetApi(1);
    std::string msg = std::string("maskedmha: this ONNX Runtime (") + api_base->GetVersionString() +
                      ") does not provide ORT API version " + std::to_string(ORT_API_VERSION) +
                      " that the library was built with";
    return old ? old->CreateStatus(ORT_FAIL, msg.c_str()) : nullptr;
  }
  Ort::InitApi(api);
  try {
    Registry& reg = GetRegistry();
    std::lock_guard<std::mutex> lock(reg.mutex);
    Ort::CustomOpDomain domain(kDomain);
    domain.Add(&reg.op);
    Ort::UnownedSessionOptions(options).Add(domain);
    reg.domains.push_back(std::move(domain));
    return nullptr;
  } catch (const Ort::Exception& e) {
    return api->CreateStatus(e.GetOrtErrorCode(), e.what());
  } catch (const std::exception& e) {
    return api->CreateStatus(ORT_FAIL, e.what());
  }
}
