// magma-train: trains a small Magma-architecture model on the synthetic UI
// and tabletop tasks, with the same modules, prompts and overlays the server
// uses, and writes a checkpoint directory in the Hugging Face layout.
//
//   magma-train --out models/magma-tiny [--steps 3000] [--batch 8] [--lr 2e-3]
//               [--checkpoint_every 250] [--resume] [--seed 1] [--threads 2]
#include <chrono>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <thread>

#include <nlohmann/json.hpp>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/strings/str_cat.h"
#include "magma/model/model.h"
#include "magma/model/random_init.h"
#include "magma/model/runtime.h"
#include "magma/model/trainer.h"
#include "magma/tokenizer/bpe_trainer.h"
#include "magma/train/synthetic_tasks.h"
#include "magma/util/logging.h"

ABSL_FLAG(std::string, out, "", "Checkpoint directory to create (or resume)");
ABSL_FLAG(int64_t, steps, 3000, "Optimizer steps");
ABSL_FLAG(int, batch, 8, "Examples per step");
ABSL_FLAG(double, lr, 2e-3, "Peak learning rate");
ABSL_FLAG(int64_t, warmup, 100, "Warm-up steps");
ABSL_FLAG(int64_t, checkpoint_every, 250, "Steps between checkpoints");
ABSL_FLAG(bool, resume, false, "Continue from the checkpoint in --out");
ABSL_FLAG(uint64_t, seed, 1, "Seed of the weights and of the data stream");
ABSL_FLAG(int, threads, 0, "libtorch threads (0 = one per core)");

namespace {

namespace fs = std::filesystem;
using nlohmann::json;

int Fail(const absl::Status& s) {
  std::cerr << "error: " << s.ToString() << "\n";
  return 1;
}

// The architecture of the embedded model: small enough to train on two
// cores, the same module layout as Magma-8B.
magma::model::Preset AgentPreset(int64_t vocab) {
  magma::model::Preset p;
  p.name = "agent-tiny";
  p.vision_depths = {1, 1, 2, 1};
  p.vision_dims = {24, 48, 96, 192};
  p.img_size = 128;
  p.max_crops = 2;
  p.hidden = 256;
  p.layers = 4;
  p.heads = 4;
  p.kv_heads = 2;
  p.intermediate = 640;
  p.vocab = vocab;
  p.max_positions = 1024;
  p.image_token_index = vocab - 1;
  p.storage_dtype = "F32";
  return p;
}

absl::Status CreateModel(const std::string& dir, uint64_t seed) {
  namespace tk = magma::tokenizer;
  const auto corpus = magma::train::SyntheticTasks::CorpusTexts(1500);
  // First pass: how many merges the corpus yields; the vocabulary is then
  // learned pieces + 256 reserved action pieces + 7 special tokens.
  tk::BpeTrainOptions probe;
  probe.num_merges = 600;
  probe.reserved_pieces = 256;
  probe.added_tokens = {};
  const std::string tmp = dir + "/.tokenizer-probe";
  if (auto s = tk::TrainByteLevelBpe(corpus, probe, tmp); !s.ok()) return s;
  auto t = tk::LoadTokenizer(tmp);
  if (!t.ok()) return t.status();
  const int32_t base = (*t)->base_vocab_size();
  fs::remove_all(tmp);
  const int64_t vocab = base + 7;
  const magma::model::Preset preset = AgentPreset(vocab);
  if (auto s = magma::model::WriteRandomModel(preset, seed, dir); !s.ok()) return s;
  tk::BpeTrainOptions options = probe;
  options.added_tokens = tk::Llama3StyleAddedTokens(static_cast<int32_t>(vocab), static_cast<int32_t>(vocab - 1));
  if (auto s = tk::TrainByteLevelBpe(corpus, options, dir); !s.ok()) return s;
  json stats = {{"tabletop", {{"action", {{"q01", {-1, -1, -1, -1, -1, -1, 0}},
                                          {"q99", {1, 1, 1, 1, 1, 1, 1}},
                                          {"mask", {true, true, true, true, true, true, false}}}}}}};
  std::ofstream(fs::path(dir) / "dataset_statistics.json") << stats.dump(2) << "\n";
  return absl::OkStatus();
}

absl::Status SaveCheckpoint(magma::model::MagmaModel& model, const std::string& dir, int64_t step, double loss) {
  const std::string tmp = dir + "/model.safetensors.tmp";
  if (auto s = model.SaveWeights(tmp); !s.ok()) return s;
  // One file replaces the initial shards.
  for (const auto& e : fs::directory_iterator(dir)) {
    const std::string name = e.path().filename().string();
    if (name.rfind("model-", 0) == 0 || name == "model.safetensors.index.json") fs::remove(e.path());
  }
  fs::rename(tmp, fs::path(dir) / "model.safetensors");
  std::ofstream(fs::path(dir) / "trainer_state.json") << json{{"step", step}, {"loss", loss}}.dump(2) << "\n";
  return absl::OkStatus();
}

}  // namespace

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage("magma-train --out DIR [--steps N] [--batch B] [--resume]");
  absl::ParseCommandLine(argc, argv);
  (void)magma::log::SetLevel("warn");
  const std::string dir = absl::GetFlag(FLAGS_out);
  if (dir.empty()) return Fail(absl::InvalidArgumentError("--out is required"));
  magma::model::ConfigureRuntime(absl::GetFlag(FLAGS_threads));
  int64_t start_step = 0;
  if (absl::GetFlag(FLAGS_resume) && fs::exists(fs::path(dir) / "trainer_state.json")) {
    std::ifstream in(fs::path(dir) / "trainer_state.json");
    start_step = json::parse(in, nullptr, false).value("step", int64_t{0});
    std::cout << "resuming at step " << start_step << "\n";
  } else {
    fs::create_directories(dir);
    if (auto s = CreateModel(dir, absl::GetFlag(FLAGS_seed)); !s.ok()) return Fail(s);
  }
  magma::model::LoadOptions lo;
  lo.dtype = "float32";
  lo.log_progress = false;
  auto model = magma::model::MagmaModel::Load(dir, lo);
  if (!model.ok()) return Fail(model.status());
  auto tok = magma::tokenizer::LoadTokenizer(dir);
  if (!tok.ok()) return Fail(tok.status());
  const magma::vision::AnyresOptions anyres = magma::model::AnyresOptionsOf((*model)->config().preprocess);
  auto ctx = magma::agent::MakeTaskContext(std::shared_ptr<const magma::tokenizer::Tokenizer>(std::move(*tok)),
                                           static_cast<int32_t>((*model)->image_token_id()), false, anyres,
                                           std::nullopt);
  if (!ctx.ok()) return Fail(ctx.status());
  magma::worlds::UiWorldOptions ui;
  magma::worlds::RobotWorldOptions robot;
  const magma::train::SyntheticTasks tasks(&*ctx, ui, robot);

  magma::model::TrainOptions to;
  to.learning_rate = absl::GetFlag(FLAGS_lr);
  to.warmup_steps = start_step > 0 ? 0 : absl::GetFlag(FLAGS_warmup);
  to.total_steps = absl::GetFlag(FLAGS_steps) - start_step;
  auto trainer = magma::model::Trainer::Create(model->get(), to);
  if (!trainer.ok()) return Fail(trainer.status());
  const int batch = absl::GetFlag(FLAGS_batch);
  const uint64_t data_seed = absl::GetFlag(FLAGS_seed) * 1000003;
  const auto t0 = std::chrono::steady_clock::now();
  double ema = 0;
  for (int64_t step = start_step; step < absl::GetFlag(FLAGS_steps); ++step) {
    std::vector<magma::model::TrainExample> examples;
    for (int i = 0; i < batch; ++i) {
      auto e = tasks.Mixed(data_seed + static_cast<uint64_t>(step) * batch + i);
      if (e.ok()) examples.push_back(std::move(e->example));
    }
    auto loss = (*trainer)->Step(examples);
    if (!loss.ok()) return Fail(loss.status());
    ema = step == start_step ? *loss : 0.95 * ema + 0.05 * *loss;
    const int64_t done = step + 1 - start_step, left = absl::GetFlag(FLAGS_steps) - step - 1;
    const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    if (done % 10 == 0 || left == 0) {
      std::cout << "step " << step + 1 << "/" << absl::GetFlag(FLAGS_steps) << " loss " << ema << " lr "
                << (*trainer)->learning_rate() << " | " << secs / done << " s/step, ETA " << left * secs / done / 60
                << " min" << std::endl;
    }
    if ((step + 1) % absl::GetFlag(FLAGS_checkpoint_every) == 0 || left == 0) {
      if (auto s = SaveCheckpoint(**model, dir, step + 1, ema); !s.ok()) return Fail(s);
    }
  }
  std::cout << "wrote " << dir << "\n";
  return 0;
}
