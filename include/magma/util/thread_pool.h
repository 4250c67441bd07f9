// A fixed set of worker threads running posted closures in order.
#ifndef MAGMA_UTIL_THREAD_POOL_H_
#define MAGMA_UTIL_THREAD_POOL_H_

#include <algorithm>
#include <condition_variable>
#include <deque>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

namespace magma {

class ThreadPool {
 public:
  explicit ThreadPool(int threads);
  // Runs what was posted, then joins.
  ~ThreadPool();
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  // Queues `fn`; thread-safe.
  void Post(std::function<void()> fn);
  // Queues `fn` unless `max_waiting` closures already wait for a thread;
  // false (and `fn` dropped) then. Thread-safe.
  bool TryPost(std::function<void()> fn, size_t max_waiting);

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::function<void()>> work_;  // guarded by mu_
  bool stop_ = false;                       // guarded by mu_
  std::vector<std::thread> threads_;
};

}  // namespace magma

#endif  // MAGMA_UTIL_THREAD_POOL_H_
