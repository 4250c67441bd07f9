// The magma-train binary as a user runs it: a short run that keeps its last
// checkpoints' weights and writes their mean as a servable model, and the
// option errors it refuses before writing anything.
#include <fcntl.h>
#include <sys/file.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <set>
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
  ASSERT_EQ(RunTrain("--out " + out + " --steps 7 --checkpoint_every 2 --average_last 3" + kSmall, tmp.File("log")), 0)
      << ReadAll(tmp.File("log"));
  // The last three checkpoints: steps 4 and 6, and the final step 7 (not the
  // one of step 2).
  std::set<std::string> kept_files;
  for (const auto& e : fs::directory_iterator(out + "/kept")) kept_files.insert(e.path().filename().string());
  EXPECT_EQ(kept_files, (std::set<std::string>{"step-4.safetensors", "step-6.safetensors", "step-7.safetensors"}));
  std::vector<std::unique_ptr<model::SafetensorsFile>> kept;
  for (int step : {4, 6, 7}) {
    auto f = model::SafetensorsFile::Open(out + "/kept/step-" + std::to_string(step) + ".safetensors");
    ASSERT_TRUE(f.ok()) << f.status();
    kept.push_back(*std::move(f));
  }
  // The training directory keeps the final weights, so --resume goes on
  // from them.
  EXPECT_EQ(ReadAll(out + "/model.safetensors"), ReadAll(out + "/kept/step-7.safetensors"));
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
  EXPECT_GT(moved, 0) << "the weights did not change between steps 4 and 7";
  const auto state = nlohmann::json::parse(ReadAll(out + "/averaged/trainer_state.json"));
  EXPECT_EQ(state.at("averaged_steps"), nlohmann::json::array({4, 6, 7}));
  EXPECT_EQ(state.at("step"), 7);
  EXPECT_FALSE(state.contains("loss"));  // the final weights' loss, not the mean's
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

TEST(MagmaTrainTest, RefusesRobotFrameShares) {
  testing::TempDir tmp;
  const std::string out = tmp.File("run");
  EXPECT_EQ(RunTrain("--out " + out + " --steps 2 --near_goal_quarters 4" + kSmall, tmp.File("log")), 1);
  EXPECT_NE(ReadAll(tmp.File("log")).find("INVALID_ARGUMENT: --near_goal_quarters must be 1, 2 or 3; got 4"),
            std::string::npos)
      << ReadAll(tmp.File("log"));
  EXPECT_EQ(RunTrain("--out " + out + " --steps 2 --missed_grasp_quarters 5" + kSmall, tmp.File("log")), 1);
  EXPECT_NE(ReadAll(tmp.File("log")).find("INVALID_ARGUMENT: --missed_grasp_quarters must be between 0 and 4; got 5"),
            std::string::npos)
      << ReadAll(tmp.File("log"));
  EXPECT_EQ(RunTrain("--out " + out + " --steps 2 --arrival_quarters -1" + kSmall, tmp.File("log")), 1);
  EXPECT_NE(ReadAll(tmp.File("log")).find("INVALID_ARGUMENT: --arrival_quarters must be between 0 and 4; got -1"),
            std::string::npos)
      << ReadAll(tmp.File("log"));
  // A release disc that reaches past the plate's success disc (0.8 * 0.08).
  EXPECT_EQ(RunTrain("--out " + out + " --steps 2 --release_steps 0.8" + kSmall, tmp.File("log")), 1);
  EXPECT_NE(ReadAll(tmp.File("log"))
                .find("INVALID_ARGUMENT: release_steps must be at least 0.375 and release inside the plate's "
                      "success disc (release_steps * max_step < 0.064); got 0.8 steps of 0.08"),
            std::string::npos)
      << ReadAll(tmp.File("log"));
  EXPECT_EQ(RunTrain("--out " + out + " --steps 2 --move_divisions 1" + kSmall, tmp.File("log")), 1);
  EXPECT_NE(ReadAll(tmp.File("log")).find("INVALID_ARGUMENT: move_divisions must be 2 to 16"), std::string::npos)
      << ReadAll(tmp.File("log"));
  EXPECT_FALSE(fs::exists(out));
}

// A weight for a training signal that is off is refused, whatever its value
// (also the value the weight takes when it is left unset).
TEST(MagmaTrainTest, RefusesTheGripperFromCellsWeightWithoutTheSignal) {
  testing::TempDir tmp;
  const std::string out = tmp.File("run");
  for (const char* weight : {"10", "1"}) {
    EXPECT_EQ(RunTrain("--out " + out + " --steps 2 --gripper_from_cells_weight " + weight + kSmall, tmp.File("log")),
              1);
    EXPECT_NE(ReadAll(tmp.File("log")).find("INVALID_ARGUMENT: --gripper_from_cells_weight needs --gripper_from_cells"),
              std::string::npos)
        << ReadAll(tmp.File("log"));
  }
  EXPECT_FALSE(fs::exists(out));
}

// --max_crops sets the new model's any-res crop limit in its config.json
// (which the server's preprocessing reads); out of range it is refused.
TEST(MagmaTrainTest, MaxCropsGoesIntoTheModelConfig) {
  testing::TempDir tmp;
  const std::string out = tmp.File("run");
  EXPECT_EQ(RunTrain("--out " + out + " --steps 1 --max_crops 9" + std::string(kSmall), tmp.File("log")), 1);
  EXPECT_NE(ReadAll(tmp.File("log")).find("INVALID_ARGUMENT: --max_crops must be between 1 and 8; got 9"),
            std::string::npos)
      << ReadAll(tmp.File("log"));
  EXPECT_FALSE(fs::exists(out));
  ASSERT_EQ(RunTrain("--out " + out + " --steps 1 --max_crops 4" + std::string(kSmall), tmp.File("log")), 0)
      << ReadAll(tmp.File("log"));
  const auto config = nlohmann::json::parse(ReadAll(out + "/config.json"));
  EXPECT_EQ(config["vision_config"]["max_num_crops"], 4);
  const auto pre = nlohmann::json::parse(ReadAll(out + "/preprocessor_config.json"));
  EXPECT_EQ(pre["num_crops"], 4) << pre.dump();
}

// --decoder_layers sets the new model's decoder depth; the layer-indexed
// supervision flags are checked against it.
TEST(MagmaTrainTest, DecoderLayersGoIntoTheModelConfig) {
  testing::TempDir tmp;
  const std::string out = tmp.File("run");
  EXPECT_EQ(RunTrain("--out " + out + " --steps 1 --decoder_layers 0" + std::string(kSmall), tmp.File("log")), 1);
  EXPECT_NE(ReadAll(tmp.File("log")).find("INVALID_ARGUMENT: --decoder_layers must be between 1 and 32; got 0"),
            std::string::npos)
      << ReadAll(tmp.File("log"));
  EXPECT_EQ(
      RunTrain("--out " + out + " --steps 1 --decoder_layers 2 --word_loss 0.5 --word_layer 2" + std::string(kSmall),
               tmp.File("log")),
      1);
  EXPECT_NE(ReadAll(tmp.File("log")).find("word_layer 2 is not one of the 2 decoder layers"), std::string::npos)
      << ReadAll(tmp.File("log"));
  EXPECT_FALSE(fs::exists(out));
  ASSERT_EQ(RunTrain("--out " + out + " --steps 1 --decoder_layers 6" + std::string(kSmall), tmp.File("log")), 0)
      << ReadAll(tmp.File("log"));
  const auto config = nlohmann::json::parse(ReadAll(out + "/config.json"));
  EXPECT_EQ(config["text_config"]["num_hidden_layers"], 6);
}

TEST(MagmaTrainTest, AveragingNeedsWeightsKeptFromTheStart) {
  testing::TempDir tmp;
  const std::string out = tmp.File("run");
  ASSERT_EQ(RunTrain("--out " + out + " --steps 2 --checkpoint_every 1" + kSmall, tmp.File("log")), 0)
      << ReadAll(tmp.File("log"));
  const std::string step2 = ReadAll(out + "/model.safetensors");
  // The run kept no weights: an average that needs step 1 is refused before
  // any training.
  EXPECT_EQ(
      RunTrain("--out " + out + " --resume --steps 3 --checkpoint_every 1 --average_last 3" + kSmall, tmp.File("log")),
      1);
  EXPECT_NE(ReadAll(tmp.File("log")).find("FAILED_PRECONDITION: --average_last: no kept weights of step 1"),
            std::string::npos)
      << ReadAll(tmp.File("log"));
  EXPECT_EQ(ReadAll(out + "/model.safetensors"), step2) << "trained despite the refusal";
  EXPECT_FALSE(fs::exists(out + "/averaged"));
  // An average from the resumed step on works: step 2's weights are the ones
  // in the directory.
  ASSERT_EQ(
      RunTrain("--out " + out + " --resume --steps 3 --checkpoint_every 1 --average_last 2" + kSmall, tmp.File("log")),
      0)
      << ReadAll(tmp.File("log"));
  EXPECT_EQ(ReadAll(out + "/kept/step-2.safetensors"), step2);
  EXPECT_EQ(nlohmann::json::parse(ReadAll(out + "/averaged/trainer_state.json")).at("averaged_steps"),
            nlohmann::json::array({2, 3}));
  // Resuming past the end is refused; starting anew in the directory drops
  // the kept and averaged weights of the earlier run.
  EXPECT_EQ(
      RunTrain("--out " + out + " --resume --steps 2 --checkpoint_every 1 --average_last 2" + kSmall, tmp.File("log")),
      1);
  EXPECT_NE(ReadAll(tmp.File("log"))
                .find("INVALID_ARGUMENT: --average_last: the checkpoint in " + out + " is at step 3, past --steps 2"),
            std::string::npos)
      << ReadAll(tmp.File("log"));
  ASSERT_EQ(RunTrain("--out " + out + " --overwrite --steps 1 --checkpoint_every 1" + kSmall, tmp.File("log")), 0)
      << ReadAll(tmp.File("log"));
  EXPECT_FALSE(fs::exists(out + "/kept"));
  EXPECT_FALSE(fs::exists(out + "/averaged"));
}

// A directory that holds a run is not replaced by a start without
// --overwrite, and --resume only continues the run's own data stream.
TEST(MagmaTrainTest, GuardsARunInItsDirectory) {
  testing::TempDir tmp;
  const std::string out = tmp.File("run");
  const std::string log = tmp.File("log");
  EXPECT_EQ(RunTrain("--out " + out + " --resume --steps 2" + kSmall, log), 1);
  EXPECT_NE(ReadAll(log).find("NOT_FOUND: --resume: no trainer_state.json in " + out), std::string::npos)
      << ReadAll(log);
  ASSERT_EQ(RunTrain("--out " + out + " --steps 2 --checkpoint_every 1" + kSmall, log), 0) << ReadAll(log);
  const std::string step2 = ReadAll(out + "/model.safetensors");
  EXPECT_EQ(RunTrain("--out " + out + " --steps 2" + kSmall, log), 1);
  EXPECT_NE(ReadAll(log).find("FAILED_PRECONDITION: " + out +
                              " holds a training run: continue it with --resume or replace it with --overwrite"),
            std::string::npos)
      << ReadAll(log);
  // Flags checked before the directory is touched.
  EXPECT_EQ(RunTrain("--out " + out + " --overwrite --steps 2 --mix clik=4" + kSmall, log), 1);
  EXPECT_EQ(RunTrain("--out " + out + " --overwrite --steps 2 --batch 0 --eval_every 0 --threads 1", log), 1);
  EXPECT_NE(ReadAll(log).find("--batch must be >= 1"), std::string::npos) << ReadAll(log);
  EXPECT_EQ(RunTrain("--out " + out + " --overwrite --steps 2 --word_loss -1" + kSmall, log), 1);
  EXPECT_NE(ReadAll(log).find("--word_loss must be >= 0; got -1"), std::string::npos) << ReadAll(log);
  EXPECT_EQ(RunTrain("--out " + out + " --overwrite --steps 2" + kSmall + " --tower_dims 8,8,16", log), 1);
  EXPECT_NE(ReadAll(log).find("--tower_dims and --tower_depths need four stages"), std::string::npos) << ReadAll(log);
  // A new model that cannot be made (no spm_train to train its tokenizer)
  // leaves the old run as it was.
  const int no_trainer = std::system(
      ("PATH=/nonexistent " + kTrain + " --out " + out + " --overwrite --steps 2" + kSmall + " > " + log + " 2>&1")
          .c_str());
  EXPECT_EQ(WIFEXITED(no_trainer) ? WEXITSTATUS(no_trainer) : -1, 1);
  EXPECT_NE(ReadAll(log).find("cannot run 'spm_train'"), std::string::npos) << ReadAll(log);
  EXPECT_TRUE(std::filesystem::exists(out + "/trainer_state.json"));
  EXPECT_FALSE(std::filesystem::exists(out + "/.new-model"));
  EXPECT_EQ(RunTrain("--out " + out + " --resume --steps 3 --seed 2" + kSmall, log), 1);
  EXPECT_NE(ReadAll(log).find("--resume: --seed 2 differs from the run's 1"), std::string::npos) << ReadAll(log);
  EXPECT_EQ(RunTrain("--out " + out + " --resume --steps 1" + kSmall, log), 1);
  EXPECT_NE(ReadAll(log).find("the checkpoint in " + out + " is at step 2, past --steps 1"), std::string::npos)
      << ReadAll(log);
  EXPECT_EQ(ReadAll(out + "/model.safetensors"), step2) << "a refused call changed the run";
  // A second magma-train on the same directory is refused while the first
  // holds it.
  {
    const int lock = open((out + "/magma-train.lock").c_str(), O_RDWR);
    ASSERT_GE(lock, 0);
    ASSERT_EQ(flock(lock, LOCK_EX | LOCK_NB), 0);
    EXPECT_EQ(RunTrain("--out " + out + " --resume --steps 3" + kSmall, log), 1);
    EXPECT_NE(ReadAll(log).find("FAILED_PRECONDITION: another magma-train is using " + out), std::string::npos)
        << ReadAll(log);
    close(lock);
  }
  // A checkpoint that is not a run (magma-cli init's) is not replaced either.
  const std::string init = tmp.File("init");
  fs::create_directories(init);
  std::ofstream(init + "/config.json") << "{}";
  EXPECT_EQ(RunTrain("--out " + init + " --steps 2" + kSmall, log), 1);
  EXPECT_NE(ReadAll(log).find(init + " holds a checkpoint: continue it with --resume or replace it with --overwrite"),
            std::string::npos)
      << ReadAll(log);
  // --batch is checked against the run's (kSmall's 1) after the others.
  EXPECT_EQ(RunTrain("--out " + out +
                         " --resume --steps 3 --batch 2 --eval_every 0 --threads 1 --tower_dims "
                         "8,8,16,16 --tower_depths 1,1,1,1 --prefetch=false",
                     log),
            1);
  EXPECT_NE(ReadAll(log).find("--resume: --batch 2 differs from the run's 1"), std::string::npos) << ReadAll(log);
}

// A run killed while it saves a checkpoint. Before the commit mark (a): the
// next start drops the .tmp files and resumes from the files in place.
// After it (b): the next start finishes the renames. Both then go on
// exactly as each other.
TEST(MagmaTrainTest, ResumesFromACheckpointCutShortByAKill) {
  testing::TempDir tmp;
  const std::string log = tmp.File("log");
  const std::string a = tmp.File("a"), b = tmp.File("b");
  const std::string flags = " --checkpoint_every 1" + std::string(kSmall);
  for (const std::string& out : {a, b}) {
    ASSERT_EQ(RunTrain("--out " + out + " --steps 4 --average_last 2" + flags, log), 0) << ReadAll(log);
  }
  ASSERT_EQ(ReadAll(a + "/model.safetensors"), ReadAll(b + "/model.safetensors"));
  // a: killed while writing step 5's files, before the mark.
  std::ofstream(a + "/model.safetensors.tmp") << "half a file";
  std::ofstream(a + "/trainer_state.json.tmp") << "{\"st";
  // b: killed between renames of step 4's files: optimizer.pt renamed, the
  // weights and the state not, step 3's still in place.
  fs::rename(b + "/model.safetensors", b + "/model.safetensors.tmp");
  fs::rename(b + "/trainer_state.json", b + "/trainer_state.json.tmp");
  fs::copy_file(b + "/kept/step-3.safetensors", b + "/model.safetensors");
  std::ofstream(b + "/trainer_state.json") << R"({"step": 3, "steps": 4, "batch": 1, "seed": 1})";
  std::ofstream(b + "/checkpoint.commit").close();
  for (const std::string& out : {a, b}) {
    ASSERT_EQ(RunTrain("--out " + out + " --resume --steps 5" + flags, log), 0) << ReadAll(log);
    EXPECT_NE(ReadAll(log).find("resuming at step 4"), std::string::npos) << ReadAll(log);
    for (const char* f : {"/model.safetensors.tmp", "/trainer_state.json.tmp", "/checkpoint.commit"}) {
      EXPECT_FALSE(fs::exists(out + f)) << out << f;
    }
    EXPECT_EQ(nlohmann::json::parse(ReadAll(out + "/trainer_state.json")).at("step"), 5);
  }
  EXPECT_EQ(ReadAll(a + "/model.safetensors"), ReadAll(b + "/model.safetensors"));
  // A state file that is not one is refused, not a crash.
  std::ofstream(a + "/trainer_state.json") << "{\"step\": \"five\"}";
  EXPECT_EQ(RunTrain("--out " + a + " --resume --steps 6" + flags, log), 1);
  EXPECT_NE(ReadAll(log).find("DATA_LOSS: --resume: " + a + "/trainer_state.json is not a trainer state"),
            std::string::npos)
      << ReadAll(log);
}

}  // namespace
}  // namespace magma
