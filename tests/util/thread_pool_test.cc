#include "magma/util/thread_pool.h"

#include <atomic>
#include <future>

#include <gtest/gtest.h>

namespace magma {
namespace {

// With its one thread busy, the pool takes `max_waiting` closures and
// refuses the next; all it took run once the thread is free.
TEST(ThreadPoolTest, TryPostRefusesBeyondTheWaitingLimit) {
  std::atomic<int> ran{0};
  std::promise<void> started, release;
  std::shared_future<void> released = release.get_future().share();
  {
    ThreadPool pool(1);
    pool.Post([&] {
      started.set_value();
      released.wait();
    });
    started.get_future().wait();  // the thread is busy; nothing waits
    EXPECT_TRUE(pool.TryPost([&] { ++ran; }, 2));
    EXPECT_TRUE(pool.TryPost([&] { ++ran; }, 2));
    EXPECT_FALSE(pool.TryPost([&] { ran += 100; }, 2));
    EXPECT_TRUE(pool.TryPost([&] { ++ran; }, 3));
    release.set_value();
  }  // the destructor runs what was queued
  EXPECT_EQ(ran.load(), 3);
}

}  // namespace
}  // namespace magma
