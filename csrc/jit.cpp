// TorchScript export (`cnas export --format torchscript`): traces a cnas network's forward pass
// into a TorchScript module the way `torch.jit.trace(model, x)` does for an nn.Module, so that
// the file has what PyTorch users expect of one: the weights as named parameters and buffers of
// nested submodules (`state_dict()` keys equal the .pth export's), and a `forward` method that
// `torch.jit.load` runs in Python or C++ without cnas. tch's own tracing helper bakes every
// weight into the graph as a constant instead, which leaves no state_dict.
#include <torch/csrc/jit/api/module.h>
#include <torch/csrc/jit/frontend/tracer.h>
#include <torch/csrc/jit/serialization/import.h>

#include <map>
#include <sstream>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include "cnas.h"

namespace {

// The module at a dotted `path` under `root`, made (with its parents) on first use. Every
// submodule gets its own class type, as a scripted nn.Module does, and a `training` flag
// (false: the traced forward is the evaluation one) so Python's `.eval()`/`.train()` work.
torch::jit::Module& submodule(std::map<std::string, torch::jit::Module>& made, torch::jit::Module& root,
                              const std::shared_ptr<torch::jit::CompilationUnit>& cu, const std::string& path) {
  if (path.empty()) {
    return root;
  }
  auto found = made.find(path);
  if (found != made.end()) {
    return found->second;
  }
  auto dot = path.rfind('.');
  std::string parent_path = dot == std::string::npos ? "" : path.substr(0, dot);
  std::string name = dot == std::string::npos ? path : path.substr(dot + 1);
  torch::jit::Module& parent = submodule(made, root, cu, parent_path);
  // Type names must be identifiers: the path with its dots as underscores.
  std::string type_name = "m_" + path;
  for (char& c : type_name) {
    if (c == '.') c = '_';
  }
  torch::jit::Module child(c10::QualifiedName("__torch__.cnas." + type_name), cu);
  child.register_attribute("training", c10::BoolType::get(), false);
  parent.register_module(name, child);
  return made.emplace(path, child).first->second;
}

}  // namespace

extern "C" {

// Builds the module from the `n` named tensors (`buffer[i]` nonzero: a buffer, else a
// parameter), traces `forward` on `input` with those tensors bound to the module's attributes,
// and serialises the module with the extra files (`extra_names[i]` → `extra_values[i]`, lengths
// in `extra_lens`), handing the bytes to `sink` (Rust writes the file). `forward` gets a new tensor handle it owns and returns a new handle
// (owned here) or null after a failure it described in cnas_last_error's slot. Returns 0, or -1.
int cnas_jit_trace_save(const char* const* names, void** tensors, const int* buffer, int n, void* input,
                        void* (*forward)(void* data, void* input), void* data, const char* const* extra_names,
                        const char* const* extra_values, const size_t* extra_lens, int n_extra,
                        void (*sink)(void* data, const char* bytes, size_t len)) {
  return cnas::guarded([&] {
    auto cu = std::make_shared<torch::jit::CompilationUnit>();
    torch::jit::Module root(c10::QualifiedName("__torch__.cnas.Network"), cu);
    root.register_attribute("training", c10::BoolType::get(), false);
    std::map<std::string, torch::jit::Module> made;
    for (int i = 0; i < n; ++i) {
      std::string full(names[i]);
      auto dot = full.rfind('.');
      std::string owner = dot == std::string::npos ? "" : full.substr(0, dot);
      std::string leaf = dot == std::string::npos ? full : full.substr(dot + 1);
      // The same tensor object the forward pass reads, so that the tracer finds its value.
      submodule(made, root, cu, owner).register_parameter(leaf, cnas::tensor(tensors[i]), buffer[i] != 0);
    }
    std::string failure;
    auto traced = [&](torch::jit::Stack stack) -> torch::jit::Stack {
      void* out = forward(data, cnas::give(stack.at(0).toTensor()));
      if (out == nullptr) {
        throw std::runtime_error(cnas::last_error().empty() ? "the forward pass failed" : cnas::last_error());
      }
      auto* owned = static_cast<at::Tensor*>(out);
      at::Tensor result = std::move(*owned);
      delete owned;
      return {result};
    };
    auto no_names = [](const at::Tensor&) { return std::string(); };
    torch::jit::Stack inputs{cnas::tensor(input)};
    auto state = std::get<0>(torch::jit::tracer::trace(std::move(inputs), traced, no_names, /*strict=*/true,
                                                         /*force_outplace=*/false, &root, {"x"}));
    auto method = cu->create_function(c10::QualifiedName(*root.type()->name(), "forward"), state->graph);
    root.type()->addMethod(method);
    torch::jit::ExtraFilesMap extra;
    for (int i = 0; i < n_extra; ++i) {
      extra[extra_names[i]] = std::string(extra_values[i], extra_lens[i]);
    }
    std::ostringstream bytes;
    root.save(bytes, extra);
    std::string out = bytes.str();
    sink(data, out.data(), out.size());
  });
}
}
