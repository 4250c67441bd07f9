// The magma-train binary as a user runs it: a short run that keeps its last
// checkpoints' weights and writes their mean as a servable model, and the
// option errors it refuses before writing anything.
#include <sys/wait.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "magma/model/model.h"
#include "magma/model/safetensors.h"
#include "testing/temp_dir.h"

namespace magma {
namespace {

namespace fs = std::filesystem;

const std::string kTrain = std::string(MAGMA_BINARY_DIR) + "/src/tools/magma-train";

// Runs magma-train with `args` (output to `log`); its exit status.
int RunTrain(const std::string& args, const std::string& log) {
  const int status = std::system((kTrain + " " + args + " > " + log + " 2>&1").c_str());
  return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

std::string ReadAll(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

// A small tower and batch: the run takes seconds.
const char kSmall[] =
    " --batch 1 --eval_every 0 --threads 1 --tower_dims 8,8,16,16 --tower_depths 1,1,1,1 --prefetch=false";

TEST(MagmaTrainTest, AveragesTheLastCheckpointsIntoAServableModel) {
  testing::TempDir tmp;
  const std::string out = tmp.File("run");
  ASSERT_EQ(RunTrain("--out " + out + " --steps 5 --checkpoint_every 2 --average_last 3" + kSmall, tmp.File("log")), 0)
      << ReadAll(tmp.File("log"));
  // The last three checkpoints: steps 2 and 4, and the final step 5.
  EXPECT_FALSE(fs::exists(out + "/kept/step-1.safetensors"));
  std::vector<std::unique_ptr<model::SafetensorsFile>> kept;
  for (int step : {2, 4, 5}) {
    auto f = model::SafetensorsFile::Open(out + "/kept/step-" + std::to_string(step) + ".safetensors");
    ASSERT_TRUE(f.ok()) << f.status();
    kept.push_back(*std::move(f));
  }
  // The training directory keeps the final weights, so --resume goes on
  // from them.
  EXPECT_EQ(ReadAll(out + "/model.safetensors"), ReadAll(out + "/kept/step-5.safetensors"));
  auto mean = model::SafetensorsFile::Open(out + "/averaged/model.safetensors");
  ASSERT_TRUE(mean.ok()) << mean.status();
  ASSERT_EQ((*mean)->tensors().size(), kept[0]->tensors().size());
  int64_t moved = 0;
  for (const auto& [name, view] : (*mean)->tensors()) {
    const auto* m = static_cast<const float*>(view.data);
    const auto* a = static_cast<const float*>(kept[0]->tensors().at(name).data);
    const auto* b = static_cast<const float*>(kept[1]->tensors().at(name).data);
    const auto* c = static_cast<const float*>(kept[2]->tensors().at(name).data);
    for (int64_t i = 0; i < view.NumElements(); ++i) {
      ASSERT_EQ(m[i], static_cast<float>((double{a[i]} + double{b[i]} + double{c[i]}) / 3)) << name << "[" << i << "]";
      moved += a[i] != c[i];
    }
  }
  EXPECT_GT(moved, 0) << "the weights did not change between steps 2 and 5";
  const auto state = nlohmann::json::parse(ReadAll(out + "/averaged/trainer_state.json"));
  EXPECT_EQ(state.at("averaged_steps"), nlohmann::json::array({2, 4, 5}));
  EXPECT_EQ(state.at("step"), 5);
  model::LoadOptions lo;
  lo.dtype = "float32";
  lo.log_progress = false;
  auto loaded = model::MagmaModel::Load(out + "/averaged", lo);
  EXPECT_TRUE(loaded.ok()) << loaded.status();
  EXPECT_FALSE(fs::exists(out + "/averaged/optimizer.pt"));
}

TEST(MagmaTrainTest, RefusesAveragingMoreCheckpointsThanTheRunWrites) {
  testing::TempDir tmp;
  const std::string out = tmp.File("run");
  EXPECT_EQ(RunTrain("--out " + out + " --steps 5 --checkpoint_every 2 --average_last 4" + kSmall, tmp.File("log")), 1);
  EXPECT_NE(ReadAll(tmp.File("log"))
                .find("INVALID_ARGUMENT: --average_last 4: --steps 5 with --checkpoint_every 2 "
                      "writes only 3 checkpoints"),
            std::string::npos)
      << ReadAll(tmp.File("log"));
  EXPECT_EQ(RunTrain("--out " + out + " --steps 5 --checkpoint_every 0" + kSmall, tmp.File("log")), 1);
  EXPECT_NE(ReadAll(tmp.File("log")).find("--checkpoint_every must be >= 1"), std::string::npos)
      << ReadAll(tmp.File("log"));
  EXPECT_FALSE(fs::exists(out));
}

TEST(MagmaTrainTest, AveragingNeedsWeightsKeptFromTheStart) {
  testing::TempDir tmp;
  const std::string out = tmp.File("run");
  ASSERT_EQ(RunTrain("--out " + out + " --steps 2 --checkpoint_every 1" + kSmall, tmp.File("log")), 0)
      << ReadAll(tmp.File("log"));
  // The finished run kept no weights: averaging it later cannot work.
  EXPECT_EQ(
      RunTrain("--out " + out + " --resume --steps 2 --checkpoint_every 1 --average_last 2" + kSmall, tmp.File("log")),
      1);
  EXPECT_NE(ReadAll(tmp.File("log")).find("FAILED_PRECONDITION: --average_last: no kept weights of step 1"),
            std::string::npos)
      << ReadAll(tmp.File("log"));
  EXPECT_FALSE(fs::exists(out + "/averaged"));
}

}  // namespace
}  // namespace magma
