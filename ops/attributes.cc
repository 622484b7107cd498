// Attribute reading (see attributes.h).
//
// The C API up to version 21 has no call that lists a node's attributes or says their types:
// each typed getter (KernelInfoGetAttribute_int64 / _float / _string) fails with ORT_FAIL both
// for an absent attribute and for one of another type; only the message differs ("No attribute
// with name:'x'is defined." vs "Attribute name and type don't match", onnxruntime's
// op_node_proto_helper.cc, the same in 1.17 .. 1.32).  So the scalar getters are tried in turn,
// which identifies int, float and string attributes without reading any message; when none
// matches, the attribute counts as present with another type (a list, tensor, graph) only if
// ORT said the type does not match.  An unrecognised message reads as "absent": a reworded
// message in some release could at worst let such an attribute default, never refuse a valid
// node.
#include "attributes.h"

#include <cstdint>
#include <sstream>
#include <string>

#include <onnxruntime_cxx_api.h>

#include "schema.h"

namespace maskedmha {

namespace {

enum class Kind { kAbsent, kInt, kFloat, kString, kOther };

struct Value {
  Kind kind = Kind::kAbsent;
  int64_t i = 0;
  float f = 0.0f;
  std::string s;
};

// Releases `st`; true when it is null (success).  The message is kept in *msg if asked.
bool Ok(const OrtApi& api, OrtStatus* st, std::string* msg = nullptr) {
  if (st == nullptr) return true;
  if (msg) *msg = api.GetErrorMessage(st);
  api.ReleaseStatus(st);
  return false;
}

Value Read(const OrtApi& api, const OrtKernelInfo* info, const char* name) {
  Value v;
  std::string int_msg;
  if (Ok(api, api.KernelInfoGetAttribute_int64(info, name, &v.i), &int_msg)) {
    v.kind = Kind::kInt;
    return v;
  }
  if (Ok(api, api.KernelInfoGetAttribute_float(info, name, &v.f))) {
    v.kind = Kind::kFloat;
    return v;
  }
  size_t size = 0;
  if (Ok(api, api.KernelInfoGetAttribute_string(info, name, nullptr, &size))) {
    v.s.assign(size, '\0');
    std::string msg;
    if (size > 0 && !Ok(api, api.KernelInfoGetAttribute_string(info, name, &v.s[0], &size), &msg))
      throw ValidationError(std::string("MaskedMHA: attribute '") + name +
                            "' could not be read: " + msg);
    while (!v.s.empty() && v.s.back() == '\0') v.s.pop_back();
    v.kind = Kind::kString;
    return v;
  }
  if (int_msg.find("type don't match") != std::string::npos) v.kind = Kind::kOther;
  return v;
}

// "a float (1.5)", "a string (\"x\")", ... : what the node gives, for a message.
std::string Describe(const Value& v) {
  std::ostringstream os;
  switch (v.kind) {
    case Kind::kInt: os << "an int (" << v.i << ")"; break;
    case Kind::kFloat: os << "a float (" << v.f << ")"; break;
    case Kind::kString: os << "a string (\"" << v.s << "\")"; break;
    case Kind::kOther: os << "of another type (not an int, float or string)"; break;
    case Kind::kAbsent: os << "absent"; break;
  }
  return os.str();
}

[[noreturn]] void Fail(const char* name, const std::string& given, const std::string& expected) {
  throw ValidationError(std::string("MaskedMHA: attribute '") + name + "' is " + given +
                        ", expected " + expected);
}

// An int 0 / 1 attribute; absent -> its default.
bool Flag(const OrtApi& api, const OrtKernelInfo* info, const IntAttribute& attr) {
  const char* name = attr.name;
  const Value v = Read(api, info, name);
  const std::string expected = "an int 0 or 1 (default " + std::to_string(attr.dflt) + ")";
  if (v.kind == Kind::kAbsent) return attr.dflt == 1;
  if (v.kind != Kind::kInt) Fail(name, Describe(v), expected);
  if (v.i != 0 && v.i != 1) Fail(name, std::to_string(v.i), expected);
  return v.i == 1;
}

int64_t NumHeads(const OrtApi& api, const OrtKernelInfo* info, const IntAttribute& attr) {
  const char* name = attr.name;
  const Value v = Read(api, info, name);
  const char* expected = "a positive int (the number of heads, dividing embed_dim)";
  if (v.kind == Kind::kAbsent)
    throw ValidationError(std::string("MaskedMHA: attribute '") + name + "' is required: " +
                          expected);
  if (v.kind != Kind::kInt) Fail(name, Describe(v), expected);
  if (v.i <= 0) Fail(name, std::to_string(v.i), expected);
  return v.i;
}

// fully_masked_row: true for its second value ("nan"), false for the first ("zero", default).
bool NanRows(const OrtApi& api, const OrtKernelInfo* info, const StringAttribute& attr) {
  const char* name = attr.name;
  const Value v = Read(api, info, name);
  const std::string quoted[2] = {std::string("\"") + attr.values[0] + "\"",
                                 std::string("\"") + attr.values[1] + "\""};
  const std::string expected = "a string " + quoted[0] + " or " + quoted[1] + " (default \"" +
                               attr.dflt + "\")";
  const std::string value = v.kind == Kind::kAbsent ? attr.dflt : v.s;
  if (v.kind != Kind::kAbsent && v.kind != Kind::kString) Fail(name, Describe(v), expected);
  if (value != attr.values[0] && value != attr.values[1]) Fail(name, "\"" + value + "\"", expected);
  return value == attr.values[1];
}

}  // namespace

Attributes ReadAttributes(const OrtApi& api, const OrtKernelInfo* info) {
  Attributes a;
  a.num_heads = NumHeads(api, info, kNumHeads);
  a.is_causal = Flag(api, info, kIsCausal);
  a.add_zero_attn = Flag(api, info, kAddZeroAttn);
  a.nan_rows = NanRows(api, info, kFullyMaskedRow);
  a.average_weights = Flag(api, info, kAverageAttnWeights);
  a.skip_padded_queries = Flag(api, info, kSkipPaddedQueries);
  ValidateAttributes(a);
  // need_weights = the node has a (non-empty) second output.
  Ort::ConstKernelInfo ki(info);
  a.need_weights = ki.GetOutputCount() >= 2 && !ki.GetOutputName(1).empty();
  return a;
}

}  // namespace maskedmha
