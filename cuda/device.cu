// Device discovery. cudart is linked statically, so this runs on machines with no NVIDIA
// driver at all: cudaGetDeviceCount then reports cudaErrorInsufficientDriver (35), which
// becomes a reason string instead of a failure to load the addon.
#include <cuda_runtime.h>

#include <mutex>
#include <string>

#include "../native/backend_api/cuda.h"

namespace bn {
namespace cuda {

bool compiled() { return true; }

namespace {
DeviceInfo probe() {
  DeviceInfo info;
  cudaRuntimeGetVersion(&info.runtime_version);
  cudaDriverGetVersion(&info.driver_version);  // 0 when no driver is installed
  int count = 0;
  const cudaError_t err = cudaGetDeviceCount(&count);
  if (err != cudaSuccess) {
    cudaGetLastError();  // clear the sticky-free error so later probes start clean
    if (err == cudaErrorInsufficientDriver && info.driver_version == 0)
      info.reason = "no NVIDIA driver (cudaGetDeviceCount: cudaErrorInsufficientDriver)";
    else if (err == cudaErrorInsufficientDriver)
      info.reason = "NVIDIA driver " + std::to_string(info.driver_version) +
                    " is older than the CUDA runtime " + std::to_string(info.runtime_version) +
                    " this addon was built with";
    else if (err == cudaErrorNoDevice)
      info.reason = "no CUDA-capable device (cudaErrorNoDevice)";
    else
      info.reason = std::string("cudaGetDeviceCount failed: ") + cudaGetErrorName(err);
    return info;
  }
  info.device_count = count;
  if (count == 0) {
    info.reason = "no CUDA-capable device";
    return info;
  }
  cudaDeviceProp prop{};
  if (cudaGetDeviceProperties(&prop, 0) != cudaSuccess) {
    info.reason = "cudaGetDeviceProperties failed";
    cudaGetLastError();
    return info;
  }
  info.name = prop.name;
  info.cc_major = prop.major;
  info.cc_minor = prop.minor;
  info.total_memory_bytes = static_cast<double>(prop.totalGlobalMem);
  info.multiprocessors = prop.multiProcessorCount;
  info.available = true;
  return info;
}
}  // namespace

const DeviceInfo& device_info() {
  static std::once_flag once;
  static DeviceInfo info;
  std::call_once(once, [] { info = probe(); });
  return info;
}

}  // namespace cuda
}  // namespace bn
