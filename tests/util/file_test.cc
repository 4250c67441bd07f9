#include "magma/util/file.h"

#include <sys/stat.h>

#include <fstream>
#include <thread>

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
  EXPECT_EQ(directory.status().message(), "cannot read config file '" + dir.path() + "': it is a directory");

  // A pipe is read too (a config given as --config <(...) or /dev/stdin).
  ASSERT_EQ(mkfifo(dir.File("fifo").c_str(), 0600), 0);
  std::thread writer([&] { std::ofstream(dir.File("fifo")) << "piped"; });
  auto piped = ReadFile(dir.File("fifo"), "test file");
  writer.join();
  ASSERT_TRUE(piped.ok()) << piped.status();
  EXPECT_EQ(*piped, "piped");
}

}  // namespace
}  // namespace magma::util
