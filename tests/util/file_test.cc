#include "magma/util/file.h"

#include <gtest/gtest.h>

#include "testing/temp_dir.h"

namespace magma::util {
namespace {

TEST(ReadFileTest, ReadsAWholeFileAndNamesWhatFailed) {
  testing::TempDir dir;
  const std::string bytes("a\0b\nc", 5);
  testing::WriteFile(dir.File("f"), bytes);
  auto read = ReadFile(dir.File("f"), "test file");
  ASSERT_TRUE(read.ok()) << read.status();
  EXPECT_EQ(*read, bytes);

  auto missing = ReadFile(dir.File("none"), "test file");
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(missing.status().message(), "cannot read test file '" + dir.File("none") + "'");

  // A directory opens on Linux and then fails to read (libstdc++ throws):
  // refused before opening.
  auto directory = ReadFile(dir.path(), "config file");
  EXPECT_EQ(directory.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(directory.status().message(), "cannot read config file '" + dir.path() + "': not a regular file");
}

}  // namespace
}  // namespace magma::util
