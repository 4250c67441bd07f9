#include "magma/util/npy.h"

#include <fstream>
#include <iterator>

#include <gtest/gtest.h>

#include "testing/temp_dir.h"

namespace magma::npy {
namespace {

TEST(NpyTest, ReadsReferenceFiles) {
  auto ids = Read(std::string(MAGMA_TEST_DATA_DIR) + "/magma-tiny-a/input_ids.npy");
  ASSERT_TRUE(ids.ok()) << ids.status();
  EXPECT_EQ(ids->dtype, DType::kInt64);
  EXPECT_EQ(ids->shape, (std::vector<int64_t>{1, 10}));
  EXPECT_EQ(ids->i64, (std::vector<int64_t>{1, 17, 305, 44, 511, 9, 128, 77, 250, 3}));
  auto pv = Read(std::string(MAGMA_TEST_DATA_DIR) + "/magma-tiny-a/pixel_values.npy");
  ASSERT_TRUE(pv.ok()) << pv.status();
  EXPECT_EQ(pv->shape, (std::vector<int64_t>{4, 3, 64, 64}));
  EXPECT_EQ(pv->f32.size(), 4u * 3 * 64 * 64);
}

TEST(NpyTest, RoundTrips) {
  testing::TempDir dir;
  Array a = FromFloat({2, 3}, {1.f, -2.5f, 3.f, 0.f, 1e-7f, 6.f});
  ASSERT_TRUE(Write(dir.File("a.npy"), a).ok());
  auto b = Read(dir.File("a.npy"));
  ASSERT_TRUE(b.ok());
  EXPECT_EQ(b->shape, a.shape);
  EXPECT_EQ(b->f32, a.f32);
  Array c = FromInt64({3}, {-1, 0, 1LL << 40});
  ASSERT_TRUE(Write(dir.File("c.npy"), c).ok());
  auto d = Read(dir.File("c.npy"));
  ASSERT_TRUE(d.ok());
  EXPECT_EQ(d->shape, (std::vector<int64_t>{3}));
  EXPECT_EQ(d->i64, c.i64);
}

TEST(NpyTest, RejectsMalformedFiles) {
  testing::TempDir dir;
  testing::WriteFile(dir.File("x.npy"), "not numpy");
  EXPECT_EQ(Read(dir.File("x.npy")).status().code(), absl::StatusCode::kInvalidArgument);
  // Valid header, too little data.
  Array a = FromFloat({4}, {1, 2, 3, 4});
  ASSERT_TRUE(Write(dir.File("t.npy"), a).ok());
  auto full = Read(dir.File("t.npy"));
  ASSERT_TRUE(full.ok());
  std::string bytes;
  {
    std::ifstream in(dir.File("t.npy"), std::ios::binary);
    bytes.assign(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
  }
  testing::WriteFile(dir.File("short.npy"), bytes.substr(0, bytes.size() - 4));
  auto s = Read(dir.File("short.npy"));
  ASSERT_FALSE(s.ok());
  EXPECT_NE(s.status().message().find("short.npy"), std::string::npos);
  EXPECT_EQ(Read(dir.File("missing.npy")).status().code(), absl::StatusCode::kNotFound);
  EXPECT_FALSE(Write(dir.File("bad.npy"), FromFloat({3}, {1, 2})).ok());
}

}  // namespace
}  // namespace magma::npy
