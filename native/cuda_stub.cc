// Stands in for cuda/*.cu when the build found no nvcc: the CUDA backends then report
// why they are unavailable through the same dispatch that carries them otherwise.
#include "../cuda/cuda_backend.h"

namespace bn {
namespace cuda {

bool compiled() { return false; }

const DeviceInfo& device_info() {
  static const DeviceInfo info = [] {
    DeviceInfo i;
    i.reason = "built without CUDA (nvcc was not found when the addon was compiled)";
    return i;
  }();
  return info;
}

}  // namespace cuda
}  // namespace bn
