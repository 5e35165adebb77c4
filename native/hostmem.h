// Host-memory helpers used around the CPU kernels.
#pragma once
#include <cstddef>

namespace bn {

// Prepares a large output buffer for writing: a fresh Float32Array's pages are not yet
// mapped, and faulting them in costs more than the kernel itself. Asks for huge pages
// (one 2 MiB fault instead of 512 4 KiB ones) and faults them in from all pool threads.
// Never changes the buffer's contents.
void advise_fresh_output(void* p, size_t bytes);

// Large library-allocated outputs: anonymous mmap (zero pages that the kernels' threads
// fault in) returned to the system by a background thread, so that neither allocating
// nor freeing hundreds of MB stalls the JS thread. alloc_host returns nullptr on failure.
void* alloc_host(size_t bytes);
void free_host_later(void* p, size_t bytes);

// Memory bandwidth of this machine, measured with the same thread pool as the kernels.
// copy: bytes read + bytes written per second; read: bytes read per second.
struct Bandwidth {
  double copy_gbs, read_gbs;
};
Bandwidth measure_bandwidth(size_t bytes, int reps);

}  // namespace bn
