// maskedmha_text_example: raw text in, embeddings out, from C++.  Runs a model written by
// maskedmha.text.export_text_model (one string input; tokenizer, padding, key padding mask and
// fused MaskedMHA attention all inside the graph) on the strings given on the command line.
//
//   maskedmha_text_example [--preload LIB.so] MODEL.onnx MASKEDMHA_LIB.so EXTENSIONS_LIB.so [TEXT ...]
//
// Registers both custom-op libraries on one Ort::SessionOptions (maskedmha's kernel, and
// onnxruntime-extensions' for the tokenizer), builds a string tensor of shape [number of TEXTs]
// (none: an empty batch) and prints every output as
//   output <name> float [d0,d1,...]
//   <values, one per line, %.9g>
// Exit status: 0 on success, 1 on an error (message on stderr), 2 on bad usage.
//
// --preload: dlopen LIB with RTLD_GLOBAL first.  onnxruntime-extensions' PyPI wheel ships its
// library as a Python extension module (_extensions_pydll.*.so): it exports RegisterCustomOps, but
// leaves CPython's symbols (Py*) to the process that loads it, so ORT's dlopen of it fails with
// "undefined symbol: Py..." unless libpython is loaded globally first (no interpreter is started:
// the tokenizer kernels never call into Python).  A libortextensions.so built from the
// onnxruntime-extensions sources needs no --preload.
#include <dlfcn.h>
#include <onnxruntime_cxx_api.h>

#include <cstdio>
#include <cstring>
#include <stdexcept>
#include <string>
#include <vector>

namespace {

void Usage(const char* argv0) {
  std::fprintf(stderr,
               "usage: %s [--preload LIB.so] MODEL.onnx MASKEDMHA_LIB.so EXTENSIONS_LIB.so [TEXT ...]\n",
               argv0);
}

void RegisterExtensions(Ort::SessionOptions& options, const char* path) {
  try {
    options.RegisterCustomOpsLibrary(path);
  } catch (const Ort::Exception& e) {
    std::string msg = e.what();
    if (msg.find("undefined symbol: Py") != std::string::npos)
      msg += "\n(this is onnxruntime-extensions' Python module from the PyPI wheel: load libpython "
             "first with --preload <libpython3.X.so.1.0>, or use a libortextensions.so built from "
             "source)";
    throw std::runtime_error(msg);
  }
}

}  // namespace

int main(int argc, char** argv) {
  int arg = 1;
  const char* preload = nullptr;
  if (arg < argc && std::strcmp(argv[arg], "--preload") == 0) {
    if (arg + 1 >= argc) {
      Usage(argv[0]);
      return 2;
    }
    preload = argv[arg + 1];
    arg += 2;
  }
  if (argc - arg < 3) {
    Usage(argv[0]);
    return 2;
  }
  const char* model_path = argv[arg];
  const char* maskedmha_lib = argv[arg + 1];
  const char* extensions_lib = argv[arg + 2];
  std::vector<const char*> texts(argv + arg + 3, argv + argc);

  try {
    if (preload != nullptr && dlopen(preload, RTLD_NOW | RTLD_GLOBAL) == nullptr)
      throw std::runtime_error(std::string("--preload: ") + dlerror());

    Ort::Env env(ORT_LOGGING_LEVEL_WARNING, "maskedmha_text_example");
    Ort::SessionOptions options;
    options.RegisterCustomOpsLibrary(maskedmha_lib);  // com.maskedmha::MaskedMHA
    RegisterExtensions(options, extensions_lib);      // ai.onnx.contrib::GPT2Tokenizer
    Ort::Session session(env, model_path, options);
    Ort::AllocatorWithDefaultOptions alloc;

    if (session.GetInputCount() != 1)
      throw std::runtime_error("the model has " + std::to_string(session.GetInputCount()) +
                               " inputs; a text model has one (a batch of strings)");
    const std::string in_name = session.GetInputNameAllocated(0, alloc).get();

    // The batch: one string per TEXT argument (UTF-8, as the shell passes it).
    const int64_t shape[1] = {static_cast<int64_t>(texts.size())};
    Ort::Value input = Ort::Value::CreateTensor(alloc, shape, 1, ONNX_TENSOR_ELEMENT_DATA_TYPE_STRING);
    if (!texts.empty()) input.FillStringTensor(texts.data(), texts.size());

    std::vector<std::string> out_names;
    for (size_t i = 0; i < session.GetOutputCount(); ++i)
      out_names.push_back(session.GetOutputNameAllocated(i, alloc).get());
    std::vector<const char*> out_c;
    for (auto& n : out_names) out_c.push_back(n.c_str());
    const char* in_c = in_name.c_str();
    auto outputs = session.Run(Ort::RunOptions{nullptr}, &in_c, &input, 1, out_c.data(), out_c.size());

    for (size_t i = 0; i < outputs.size(); ++i) {
      auto info = outputs[i].GetTensorTypeAndShapeInfo();
      if (info.GetElementType() != ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT)
        throw std::runtime_error("output '" + out_names[i] + "' is not float");
      const auto dims = info.GetShape();
      std::printf("output %s float [", out_names[i].c_str());
      for (size_t d = 0; d < dims.size(); ++d) std::printf(d ? ",%lld" : "%lld", static_cast<long long>(dims[d]));
      std::printf("]\n");
      const float* p = outputs[i].GetTensorData<float>();
      for (size_t k = 0; k < info.GetElementCount(); ++k) std::printf("%.9g\n", p[k]);
    }
    return 0;
  } catch (const std::exception& e) {  // Ort::Exception included
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
}
