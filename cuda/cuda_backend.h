// The CUDA side as seen from native/: plain C++ declarations, no CUDA headers, so the
// binding compiles the same with or without nvcc. Implemented by cuda/*.cu when the
// build found nvcc, and by native/cuda_stub.cc otherwise.
#pragma once
#include <string>

#include "../native/status.h"

namespace bn {
namespace cuda {

struct DeviceInfo {
  bool available = false;
  std::string reason;  // why not, when !available
  std::string name;    // device 0
  int cc_major = 0, cc_minor = 0;
  double total_memory_bytes = 0;
  int driver_version = 0;   // e.g. 13000, 0 when no driver
  int runtime_version = 0;  // the statically linked cudart's version
  int device_count = 0;
};

// True when this binary contains CUDA code.
bool compiled();
// Lazily probes the driver and device 0 once per process (thread-safe) and caches it.
const DeviceInfo& device_info();

}  // namespace cuda
}  // namespace bn
