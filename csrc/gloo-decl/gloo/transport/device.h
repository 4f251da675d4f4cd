#pragma once
// See ../README.md: only held through smart pointers by ProcessGroupGloo.
namespace gloo {
namespace transport {
class Device;
class UnboundBuffer;
}  // namespace transport
}  // namespace gloo
