// maskedmha_example: run an ONNX model that uses com.maskedmha::MaskedMHA from C++.
//
//   maskedmha_example MODEL.onnx LIBRARY.so [NAME=FILE.npy ...]
//
// Registers the custom-op library with Ort::SessionOptions::RegisterCustomOpsLibrary, feeds each
// model input from the given .npy file (float32 or bool, C order), or, for inputs not given and
// whose shape is fully static, with deterministic values (float: sin(0.1*i), bool: false), runs
// the model and prints every output as
//   output <name> <elem_type> [d0,d1,...]
//   <values, one per line, %.9g>
#include <onnxruntime_cxx_api.h>

#include <cmath>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <map>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

namespace {

struct Array {
  ONNXTensorElementDataType type = ONNX_TENSOR_ELEMENT_DATA_TYPE_UNDEFINED;
  std::vector<int64_t> shape;
  std::vector<char> bytes;
};

// Minimal .npy reader (format versions 1-3, little-endian '<f4' or '|b1', C order).
Array ReadNpy(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) throw std::runtime_error("cannot open " + path);
  char magic[6];
  f.read(magic, 6);
  if (!f || std::memcmp(magic, "\x93NUMPY", 6) != 0) throw std::runtime_error(path + ": not a .npy file");
  unsigned char ver[2];
  f.read(reinterpret_cast<char*>(ver), 2);
  uint32_t hlen = 0;
  if (ver[0] == 1) {
    unsigned char b[2];
    f.read(reinterpret_cast<char*>(b), 2);
    hlen = b[0] | (b[1] << 8);
  } else {
    unsigned char b[4];
    f.read(reinterpret_cast<char*>(b), 4);
    hlen = b[0] | (b[1] << 8) | (b[2] << 16) | (static_cast<uint32_t>(b[3]) << 24);
  }
  std::string header(hlen, '\0');
  f.read(&header[0], hlen);
  if (!f) throw std::runtime_error(path + ": truncated header");

  Array a;
  if (header.find("'<f4'") != std::string::npos) a.type = ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT;
  else if (header.find("'|b1'") != std::string::npos) a.type = ONNX_TENSOR_ELEMENT_DATA_TYPE_BOOL;
  else throw std::runtime_error(path + ": only float32 ('<f4') and bool ('|b1') arrays are supported");
  if (header.find("'fortran_order': False") == std::string::npos)
    throw std::runtime_error(path + ": Fortran-order arrays are not supported");
  const size_t lp = header.find('(', header.find("'shape'"));
  const size_t rp = header.find(')', lp);
  std::stringstream dims(header.substr(lp + 1, rp - lp - 1));
  std::string tok;
  size_t count = 1;
  while (std::getline(dims, tok, ',')) {
    if (tok.find_first_not_of(" ") == std::string::npos) continue;
    a.shape.push_back(std::stoll(tok));
    count *= static_cast<size_t>(a.shape.back());
  }
  const size_t elem = a.type == ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT ? 4 : 1;
  a.bytes.resize(count * elem);
  f.read(a.bytes.data(), static_cast<std::streamsize>(a.bytes.size()));
  if (!f) throw std::runtime_error(path + ": truncated data");
  return a;
}

Array Generate(ONNXTensorElementDataType type, const std::vector<int64_t>& shape,
               const std::string& name) {
  Array a;
  a.type = type;
  a.shape = shape;
  size_t count = 1;
  for (int64_t d : shape) {
    if (d < 0) throw std::runtime_error("input '" + name + "' has a dynamic shape: give it as NAME=FILE.npy");
    count *= static_cast<size_t>(d);
  }
  if (type == ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT) {
    a.bytes.resize(count * sizeof(float));
    float* p = reinterpret_cast<float*>(a.bytes.data());
    for (size_t i = 0; i < count; ++i) p[i] = std::sin(0.1f * static_cast<float>(i));
  } else if (type == ONNX_TENSOR_ELEMENT_DATA_TYPE_BOOL) {
    a.bytes.assign(count, 0);
  } else {
    throw std::runtime_error("input '" + name + "': only float and bool inputs can be generated");
  }
  return a;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 3) {
    std::fprintf(stderr, "usage: %s MODEL.onnx LIBRARY.so [NAME=FILE.npy ...]\n", argv[0]);
    return 2;
  }
  try {
    std::map<std::string, std::string> files;
    for (int i = 3; i < argc; ++i) {
      const std::string arg = argv[i];
      const size_t eq = arg.find('=');
      if (eq == std::string::npos) throw std::runtime_error("expected NAME=FILE.npy, got " + arg);
      files[arg.substr(0, eq)] = arg.substr(eq + 1);
    }

    Ort::Env env(ORT_LOGGING_LEVEL_WARNING, "maskedmha_example");
    Ort::SessionOptions options;
    options.RegisterCustomOpsLibrary(argv[2]);  // ORT loads it and calls RegisterCustomOps
    Ort::Session session(env, argv[1], options);
    Ort::AllocatorWithDefaultOptions alloc;
    Ort::MemoryInfo mem = Ort::MemoryInfo::CreateCpu(OrtArenaAllocator, OrtMemTypeDefault);

    std::vector<std::string> in_names, out_names;
    std::vector<Array> arrays;
    std::vector<Ort::Value> inputs;
    for (size_t i = 0; i < session.GetInputCount(); ++i) {
      const std::string name = session.GetInputNameAllocated(i, alloc).get();
      Ort::TypeInfo type_info = session.GetInputTypeInfo(i);  // owns what `info` points to
      auto info = type_info.GetTensorTypeAndShapeInfo();
      auto it = files.find(name);
      Array a = it != files.end() ? ReadNpy(it->second)
                                  : Generate(info.GetElementType(), info.GetShape(), name);
      if (a.type != info.GetElementType())
        throw std::runtime_error("input '" + name + "': element type of the file does not match the model");
      files.erase(name);
      in_names.push_back(name);
      arrays.push_back(std::move(a));
    }
    if (!files.empty()) throw std::runtime_error("the model has no input named '" + files.begin()->first + "'");
    for (Array& a : arrays)
      inputs.push_back(Ort::Value::CreateTensor(mem, a.bytes.data(), a.bytes.size(), a.shape.data(),
                                                a.shape.size(), a.type));
    for (size_t i = 0; i < session.GetOutputCount(); ++i)
      out_names.push_back(session.GetOutputNameAllocated(i, alloc).get());

    std::vector<const char*> in_c, out_c;
    for (auto& n : in_names) in_c.push_back(n.c_str());
    for (auto& n : out_names) out_c.push_back(n.c_str());
    auto outputs = session.Run(Ort::RunOptions{nullptr}, in_c.data(), inputs.data(), inputs.size(),
                               out_c.data(), out_c.size());

    for (size_t o = 0; o < outputs.size(); ++o) {
      auto info = outputs[o].GetTensorTypeAndShapeInfo();
      if (info.GetElementType() != ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT)
        throw std::runtime_error("output '" + out_names[o] + "' is not float");
      const auto shape = info.GetShape();
      std::printf("output %s float [", out_names[o].c_str());
      for (size_t d = 0; d < shape.size(); ++d) std::printf("%s%lld", d ? "," : "", static_cast<long long>(shape[d]));
      std::printf("]\n");
      const float* p = outputs[o].GetTensorData<float>();
      for (size_t k = 0; k < info.GetElementCount(); ++k) std::printf("%.9g\n", p[k]);
    }
    return 0;
  } catch (const Ort::Exception& e) {
    std::fprintf(stderr, "onnxruntime error: %s\n", e.what());
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
  }
  return 1;
}
