#include "threadpool.h"

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdlib>
#include <deque>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

namespace bn {
namespace {

struct Job {
  size_t n;
  const std::function<void(size_t)>* fn;
  std::atomic<size_t> next{0};
  std::atomic<size_t> done{0};
  std::mutex m;
  std::condition_variable cv;

  Job(size_t n_, const std::function<void(size_t)>* f) : n(n_), fn(f) {}

  // Claims indices until none are left. Returns after the last claimed one ran.
  void work() {
    size_t finished = 0;
    for (size_t i; (i = next.fetch_add(1, std::memory_order_relaxed)) < n;) {
      (*fn)(i);
      ++finished;
    }
    if (finished && done.fetch_add(finished, std::memory_order_acq_rel) + finished == n) {
      std::lock_guard<std::mutex> lk(m);
      cv.notify_all();
    }
  }
  void wait() {
    std::unique_lock<std::mutex> lk(m);
    cv.wait(lk, [&] { return done.load(std::memory_order_acquire) == n; });
  }
};

int initial_threads() {
  if (const char* s = std::getenv("BATCHNORM_NUM_THREADS")) {
    char* end = nullptr;
    long v = std::strtol(s, &end, 10);
    if (end != s && *end == '\0' && v > 0) return static_cast<int>(std::min(v, 256L));
  }
  unsigned hc = std::thread::hardware_concurrency();
  return hc ? static_cast<int>(std::min(hc, 256u)) : 1;
}

class Pool {
 public:
  // Each queued entry is a "ticket": one helper thread's invitation to a job. A job
  // pushes as many tickets as helpers it wants; a helper that finds the job already
  // drained simply drops the ticket.
  void run(size_t n, const std::function<void(size_t)>& fn) {
    int limit = limit_.load(std::memory_order_relaxed);
    size_t helpers = std::min<size_t>(n - 1, static_cast<size_t>(limit - 1));
    auto job = std::make_shared<Job>(n, &fn);
    if (helpers > 0) {
      std::lock_guard<std::mutex> lk(m_);
      grow_locked(helpers);
      for (size_t i = 0; i < helpers; ++i) tickets_.push_back(job);
    }
    if (helpers > 0) cv_.notify_all();
    job->work();  // the caller works too, so a job always makes progress
    job->wait();  // fn stays alive until every helper has finished its indices
  }

  int limit() const { return limit_.load(std::memory_order_relaxed); }
  void set_limit(int n) { limit_.store(std::clamp(n, 1, 256), std::memory_order_relaxed); }

 private:
  void grow_locked(size_t helpers) {
    while (threads_ < helpers) {
      std::thread([this] { loop(); }).detach();  // the pool lives for the whole process
      ++threads_;
    }
  }
  void loop() {
    for (;;) {
      std::shared_ptr<Job> job;
      {
        std::unique_lock<std::mutex> lk(m_);
        cv_.wait(lk, [&] { return !tickets_.empty(); });
        job = std::move(tickets_.front());
        tickets_.pop_front();
      }
      job->work();
    }
  }

  std::mutex m_;
  std::condition_variable cv_;
  std::deque<std::shared_ptr<Job>> tickets_;
  size_t threads_ = 0;
  std::atomic<int> limit_{initial_threads()};
};

// Never destroyed: detached helpers may still wait on it while the process exits.
Pool& pool() {
  static Pool* p = new Pool();
  return *p;
}

}  // namespace

void parallel_for(size_t n, const std::function<void(size_t)>& fn) {
  if (n == 0) return;
  if (n == 1 || pool().limit() <= 1) {
    for (size_t i = 0; i < n; ++i) fn(i);
    return;
  }
  pool().run(n, fn);
}

int num_threads() { return pool().limit(); }
void set_num_threads(int n) { pool().set_limit(n); }

}  // namespace bn
