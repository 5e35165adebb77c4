// Host-memory helpers used around the CPU kernels.
#pragma once
#include <cstddef>

namespace bn {

// Asks the kernel to back the untouched pages of a large output buffer with huge pages:
// a fresh Float32Array's pages are faulted in by our first write, and 2 MiB faults are
// far cheaper than 512 4 KiB ones. Advice only: harmless on memory already touched.
void advise_fresh_output(void* p, size_t bytes);

// Memory bandwidth of this machine, measured with the same thread pool as the kernels.
// copy: bytes read + bytes written per second; read: bytes read per second.
struct Bandwidth {
  double copy_gbs, read_gbs;
};
Bandwidth measure_bandwidth(size_t bytes, int reps);

}  // namespace bn
