// Library entry point: ORT calls RegisterCustomOps(options, api_base) when the library is
// registered (SessionOptions.register_custom_ops_library / RegisterCustomOpsLibrary).
//
// We link nothing from ORT (built with ORT_API_MANUAL_INIT): the C API table comes from api_base.
// One build serves every ORT from 1.17 on (ort_api.h): we take the table at the highest version
// both the running ORT and the library know, declare the op at that version (ORT refuses an op
// declaring a version newer than itself) and call nothing newer than kMinOrtApi.  The domain and
// op objects must outlive every session that uses them, so they live in a static container for
// the life of the process (ORT does not take ownership of them).
#include <algorithm>
#include <cstdio>
#include <mutex>
#include <string>

#include "masked_mha_op.h"
#include "ort_api.h"
#include "schema.h"

namespace {

struct Registry {
  std::mutex mutex;
  maskedmha::MaskedMHAOp op;
  bool configured = false;  // op's version and hook set (on the first registration)
  std::vector<Ort::CustomOpDomain> domains;  // one per registration, kept alive
};

Registry& GetRegistry() {
  static Registry* r = new Registry();  // never destroyed: sessions may outlive static teardown
  return *r;
}

// "1.21.1" -> major 1, minor 21; both 0 when the string does not start "<int>.<int>".
struct Release {
  int major = 0;
  int minor = 0;
};

Release ParseRelease(const char* s) {
  Release r;
  int major = 0, minor = 0;
  if (s != nullptr && std::sscanf(s, "%d.%d", &major, &minor) == 2 && major >= 0 && minor >= 0) {
    r.major = major;
    r.minor = minor;
  }
  return r;
}

// The highest C API version in [kMinOrtApi, kMaxOrtApi] the running ORT provides, or 0.  ORT 1.x
// provides versions 1..x, so the search starts at x: GetApi prints a line to stderr for every
// version it lacks.  (An unrecognised version string starts the search at kMaxOrtApi.)
uint32_t NegotiateApi(const OrtApiBase* base, const Release& rel) {
  uint32_t v = maskedmha::kMaxOrtApi;
  if (rel.major == 1) v = std::min<uint32_t>(v, static_cast<uint32_t>(rel.minor));
  for (; v >= maskedmha::kMinOrtApi; --v)
    if (base->GetApi(v) != nullptr) return v;
  return 0;
}

// The shape-inference hook only where ORT survives nodes with absent optional inputs (ort_api.h).
bool ShapeInferenceSafe(const Release& rel) {
  return rel.major > 1 || (rel.major == 1 && rel.minor >= maskedmha::kFirstMinorWithSafeShapeInference);
}

}  // namespace

extern "C" __attribute__((visibility("default"))) OrtStatus* ORT_API_CALL
RegisterCustomOps(OrtSessionOptions* options, const OrtApiBase* api_base) {
  if (api_base == nullptr) return nullptr;  // cannot even report an error without the API
  const char* ort_version = api_base->GetVersionString();
  const Release rel = ParseRelease(ort_version);
  const uint32_t version = NegotiateApi(api_base, rel);
  if (version == 0) {
    // Too old (or not ORT): report through API 1, which every release provides.
    const OrtApi* old = api_base->GetApi(1);
    const std::string msg =
        std::string("maskedmha: ONNX Runtime ") + (ort_version ? ort_version : "(unknown)") +
        " is too old: the library needs ONNX Runtime 1." + std::to_string(maskedmha::kMinOrtApi) +
        " or newer (C API version " + std::to_string(maskedmha::kMinOrtApi) + ")";
    return old ? old->CreateStatus(ORT_FAIL, msg.c_str()) : nullptr;
  }
  const OrtApi* api = api_base->GetApi(version);
  Ort::InitApi(api);
  try {
    Registry& reg = GetRegistry();
    std::lock_guard<std::mutex> lock(reg.mutex);
    // Set once, before ORT first sees the op: a process holds one ORT, so later registrations
    // would compute the same values, and sessions may be reading the op meanwhile.
    if (!reg.configured) {
      reg.op.Configure(version, ShapeInferenceSafe(rel));
      reg.configured = true;
    }
    Ort::CustomOpDomain domain(maskedmha::kDomain);
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
