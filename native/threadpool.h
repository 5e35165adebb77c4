// A small fork-join pool shared by every Node environment (main thread, worker_threads,
// AsyncWorker threads). Several callers may run jobs at once; each job is a fixed set of
// task indices, so *what* is computed never depends on how many threads help — the
// kernels get determinism by fixing their chunking and merge order, not by the pool.
#pragma once
#include <cstddef>
#include <functional>

namespace bn {

// Runs fn(0..n-1), possibly in parallel; returns when all calls have finished.
// fn must not throw.
void parallel_for(size_t n, const std::function<void(size_t)>& fn);

// Number of threads (the caller included) that may work on one job. Initial value:
// BATCHNORM_NUM_THREADS if set to a positive integer, else hardware concurrency.
int num_threads();
void set_num_threads(int n);  // clamped to [1, 256]

}  // namespace bn
