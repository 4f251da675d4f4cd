#pragma once
// See README.md. ProcessGroupGloo::setTimeout (inline) calls Context::setTimeout; cnas never
// calls it, the declaration only lets the header compile.
#include <chrono>

namespace gloo {
class Context {
 public:
  void setTimeout(std::chrono::milliseconds timeout);
};
}  // namespace gloo
