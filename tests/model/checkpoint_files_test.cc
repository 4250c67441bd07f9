#include "magma/model/checkpoint_files.h"

#include <algorithm>
#include <filesystem>

#include <gtest/gtest.h>

#include "testing/temp_dir.h"

namespace magma::model {
namespace {

TEST(CheckpointFilesTest, ListsTheCheckpointsFilesOnly) {
  testing::TempDir dir;
  for (const char* name : {"config.json", "tokenizer.model", "model-00001-of-00002.safetensors", "optimizer.pt",
                           "notes.txt", "model-1.safetensors", "config.json.bak"}) {
    testing::WriteFile(dir.File(name), "x");
  }
  std::filesystem::create_directory(dir.File("tokenizer.json"));  // a directory, not a file
  std::vector<std::string> files = CheckpointFilesIn(dir.path());
  std::sort(files.begin(), files.end());
  EXPECT_EQ(files, (std::vector<std::string>{dir.File("config.json"), dir.File("model-00001-of-00002.safetensors"),
                                             dir.File("optimizer.pt"), dir.File("tokenizer.model")}));

  ASSERT_TRUE(RemoveFiles(files).ok());
  EXPECT_TRUE(CheckpointFilesIn(dir.path()).empty());
  EXPECT_TRUE(std::filesystem::exists(dir.File("notes.txt")));
  EXPECT_TRUE(std::filesystem::exists(dir.File("tokenizer.json")));
  EXPECT_TRUE(RemoveFiles(files).ok());  // already gone
  EXPECT_TRUE(CheckpointFilesIn(dir.File("missing")).empty());
}

TEST(CheckpointFilesTest, ReportsAFileThatCannotBeRemoved) {
  testing::TempDir dir;
  std::filesystem::create_directories(dir.File("config.json/inside"));  // a non-empty directory
  const absl::Status s = RemoveFiles({dir.File("config.json")});
  EXPECT_EQ(s.code(), absl::StatusCode::kInternal);
  EXPECT_NE(s.message().find("config.json"), std::string::npos) << s;
}

}  // namespace
}  // namespace magma::model
