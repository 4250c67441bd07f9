#include "magma/util/thread_pool.h"

#include <limits>

namespace magma {

ThreadPool::ThreadPool(int threads) {
  for (int i = 0; i < std::max(1, threads); ++i) {
    threads_.emplace_back([this] {
      for (;;) {
        std::function<void()> fn;
        {
          std::unique_lock<std::mutex> lock(mu_);
          cv_.wait(lock, [this] { return stop_ || !work_.empty(); });
          if (work_.empty()) return;
          fn = std::move(work_.front());
          work_.pop_front();
        }
        fn();
      }
    });
  }
}

ThreadPool::~ThreadPool() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  for (auto& t : threads_) t.join();
}

void ThreadPool::Post(std::function<void()> fn) { TryPost(std::move(fn), std::numeric_limits<size_t>::max()); }

bool ThreadPool::TryPost(std::function<void()> fn, size_t max_waiting) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (work_.size() >= max_waiting) return false;
    work_.push_back(std::move(fn));
  }
  cv_.notify_one();
  return true;
}

}  // namespace magma
