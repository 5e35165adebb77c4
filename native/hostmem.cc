#include "hostmem.h"

#include <sys/mman.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstring>
#include <system_error>
#include <thread>
#include <vector>

#include "simd.h"
#include "threadpool.h"

namespace bn {

void advise_fresh_output(void* p, size_t bytes) {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  constexpr uintptr_t kHuge = 2u << 20;
  if (bytes < 4 * kHuge) return;
  const uintptr_t lo = (reinterpret_cast<uintptr_t>(p) + kHuge - 1) & ~(kHuge - 1);
  const uintptr_t hi = (reinterpret_cast<uintptr_t>(p) + bytes) & ~(kHuge - 1);
  if (hi <= lo) return;
  madvise(reinterpret_cast<void*>(lo), hi - lo, MADV_HUGEPAGE);
  // Fault the pages in from every pool thread at once: the kernel zeroes each new page,
  // and one thread alone cannot zero as fast as memory takes it. Each thread writes one
  // word per 2 MiB page with an atomic add of 0, which leaves the contents alone (also on
  // memory another thread writes) and takes the page-fault path, which locks only this
  // mapping. MADV_POPULATE_WRITE would do the same under the process-wide mmap lock, and
  // every mmap, munmap, mprotect and brk of the JS thread (V8's heap, malloc) then waits
  // behind the page zeroing: event-loop stalls of tens of ms on a loaded machine.
  const size_t pages = (hi - lo) / kHuge;
  parallel_for(pages, [&](size_t i) {
    __atomic_fetch_add(reinterpret_cast<int*>(lo + i * kHuge), 0, __ATOMIC_RELAXED);
  });
#else
  (void)p;
  (void)bytes;
#endif
}

void* alloc_host(size_t bytes) {
  if (bytes == 0) return nullptr;
  void* p = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  return p == MAP_FAILED ? nullptr : p;
}

void free_host_later(void* p, size_t bytes) {
  if (!p) return;
  // Unmapping populated memory costs about 1 ms per 10 MB; a thread of its own pays it.
  try {
    std::thread([p, bytes] { munmap(p, bytes); }).detach();
  } catch (const std::system_error&) {
    munmap(p, bytes);
  }
}

namespace {
BN_CLONES void copy_all(const float* __restrict src, float* __restrict dst, size_t n) {
  for (size_t i = 0; i < n; ++i) dst[i] = src[i];
}

BN_CLONES float read_all(const float* __restrict x, size_t n) {
  float acc[16] = {};
  for (size_t i = 0; i + 16 <= n; i += 16)
    for (int k = 0; k < 16; ++k) acc[k] += x[i + k];
  float s = 0;
  for (float a : acc) s += a;
  return s;
}
}  // namespace

Bandwidth measure_bandwidth(size_t bytes, int reps) {
  constexpr size_t kChunk = 1 << 20;
  const size_t n = bytes / sizeof(float);
  std::vector<float> a(n, 1.0f), b(n, 0.0f);  // touched: no page faults inside the timing
  const size_t tasks = (bytes + kChunk - 1) / kChunk;
  auto time_it = [&](auto&& body) {
    double best = 1e30;
    for (int r = 0; r < reps; ++r) {
      const auto t0 = std::chrono::steady_clock::now();
      body();
      const std::chrono::duration<double> dt = std::chrono::steady_clock::now() - t0;
      best = std::min(best, dt.count());
    }
    return best;
  };
  // The copy floor is the faster of memcpy (which may use non-temporal stores) and a
  // plain vector loop (what the kernels' stores look like).
  const double tc = std::min(time_it([&] {
    parallel_for(tasks, [&](size_t t) {
      const size_t lo = t * kChunk / sizeof(float), hi = std::min(n, lo + kChunk / sizeof(float));
      std::memcpy(b.data() + lo, a.data() + lo, (hi - lo) * sizeof(float));
    });
  }), time_it([&] {
    parallel_for(tasks, [&](size_t t) {
      const size_t lo = t * kChunk / sizeof(float), hi = std::min(n, lo + kChunk / sizeof(float));
      copy_all(a.data() + lo, b.data() + lo, hi - lo);
    });
  }));
  volatile float sink = 0;
  std::vector<float> part(tasks);
  const double tr = time_it([&] {
    parallel_for(tasks, [&](size_t t) {
      const size_t lo = t * kChunk / sizeof(float), hi = std::min(n, lo + kChunk / sizeof(float));
      part[t] = read_all(a.data() + lo, hi - lo);
    });
    sink = part[0];
  });
  (void)sink;
  const double moved = static_cast<double>(n * sizeof(float));
  return {2 * moved / tc / 1e9, moved / tr / 1e9};
}

const char* cpu_simd_level() {
#if defined(__x86_64__) && defined(__GNUC__)
  __builtin_cpu_init();
  if (__builtin_cpu_supports("x86-64-v4")) return "x86-64-v4 (AVX-512)";
  if (__builtin_cpu_supports("x86-64-v3")) return "x86-64-v3 (AVX2, FMA)";
  return "x86-64 baseline (SSE2)";
#else
  return "portable C++";
#endif
}

}  // namespace bn
