// magma-train: trains a small Magma-architecture model on the synthetic UI
// and tabletop tasks, with the same modules, prompts and overlays the server
// uses, and writes a checkpoint directory in the Hugging Face layout.
//
//   magma-train --out models/magma-tiny [--steps 3000] [--batch 8] [--lr 2e-3]
//               [--checkpoint_every 250] [--resume] [--seed 1] [--threads 2]
//               [--average_last N]
#include <fcntl.h>
#include <sys/file.h>
#include <unistd.h>
#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <future>
#include <iostream>
#include <map>
#include <optional>
#include <set>
#include <thread>

#include <torch/csrc/autograd/profiler_kineto.h>
#include <nlohmann/json.hpp>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "magma/agent/action_codec.h"
#include "magma/model/checkpoint_files.h"
#include "magma/model/kernels.h"
#include "magma/model/model.h"
#include "magma/model/random_init.h"
#include "magma/model/runtime.h"
#include "magma/model/safetensors.h"
#include "magma/model/trainer.h"
#include "magma/tokenizer/spm_trainer.h"
#include "magma/train/synthetic_tasks.h"
#include "magma/util/logging.h"
#include "table_flags.h"

ABSL_FLAG(std::string, out, "", "Checkpoint directory to create (or resume)");
ABSL_FLAG(int64_t, steps, 3000, "Optimizer steps");
ABSL_FLAG(int, batch, 8, "Examples per step");
ABSL_FLAG(double, lr, 2e-3, "Peak learning rate");
ABSL_FLAG(int64_t, warmup, 100, "Warm-up steps");
ABSL_FLAG(int64_t, checkpoint_every, 250, "Steps between checkpoints");
ABSL_FLAG(bool, resume, false, "Continue from the checkpoint in --out");
ABSL_FLAG(bool, overwrite, false, "Start anew in an --out that holds a training run, replacing it");
ABSL_FLAG(int64_t, average_last, 0,
          "At the end, also write <out>/averaged: the model whose weights are the mean of the last N checkpoints' "
          "(the final step's and the N-1 at multiples of --checkpoint_every before it; their weights are kept in "
          "<out>/kept); 0 = off");
ABSL_FLAG(uint64_t, seed, 1, "Seed of the weights and of the data stream");
ABSL_FLAG(bool, prefetch, true, "Render the next batch on a second thread during each step");
ABSL_FLAG(int64_t, eval_every, 250, "Steps between held-out accuracy reports (0 = never)");
ABSL_FLAG(std::string, mix, "click=4,act=3,path=1,question=2", "Relative weights of the training tasks");
ABSL_FLAG(double, cell_loss, 1.0,
          "Weight of the vision tower's auxiliary per-cell loss (what is where, marks, labels); 0 = off");
ABSL_FLAG(std::vector<std::string>, cell_head_weights, {},
          "Weights of the cell heads inside --cell_loss, in the order what, mark, label, overlay (empty = all 1)");
ABSL_FLAG(double, cell_offset_weight, 10, "Weight of the cell heads' centre-offset regression inside --cell_loss");
ABSL_FLAG(double, cell_where_weight, 10, "Weight of the cells' own-position read-out inside --cell_loss");
ABSL_FLAG(bool, marks_on_things, true,
          "The mark cell head names a marked widget's mark in the widget's cells too (false: only where its label "
          "is drawn)");
ABSL_FLAG(bool, gripper_from_cells, false,
          "Every tower cell of a tabletop frame also regresses where the gripper is from it (training-only cell "
          "target, within 2 cells per axis)");
constexpr double kGripperFromCellsWeight = 10;
ABSL_FLAG(std::optional<double>, gripper_from_cells_weight, std::nullopt,
          "Weight of --gripper_from_cells' regression inside --cell_loss (the other offsets: --cell_offset_weight; "
          "unset = 10)");
ABSL_FLAG(bool, labels_on_text, false,
          "The label cell head names a widget's label only in the cells its text is drawn in (the widget's other "
          "cells are left out of that head's loss)");
ABSL_FLAG(bool, absent_to_start, false,
          "Questions about something not on the screen train the pointer head to rest on the prompt's first token, "
          "and the word layer to read the words naming it (otherwise they have no pointer)");
ABSL_FLAG(int, near_goal_quarters, 1,
          "Robot frames: quarters (1-3) whose gripper is moved to within two steps per axis of its goal (one more "
          "quarter puts it anywhere on the table)");
ABSL_FLAG(int, missed_grasp_quarters, 1,
          "Robot frames: quarters (0-4) of the near-goal frames with nothing held that show the gripper closed on "
          "nothing (elsewhere: one quarter)");
ABSL_FLAG(int, arrival_quarters, 0,
          "Robot frames: quarters (0-4) of the near-goal frames whose gripper is put within the expert's arrival "
          "distance of its goal, where the expert closes or opens the gripper");
ABSL_FLAG(int64_t, marks_first, 0,
          "Steps at the start in which the tower learns only to read mark numbers (the mark cell head alone among "
          "the cell losses; the decoder's attention losses and the answer loss as always); 0 = none");
ABSL_FLAG(int64_t, labels_next, 0,
          "Steps after the --marks_first phase in which the tower learns only to read widget labels (the label cell "
          "head alone, likewise); 0 = none");
ABSL_FLAG(double, clip_norm, 1.0, "Gradient-norm clipping limit (0 = off)");
ABSL_FLAG(double, attention_loss, 0.5,
          "Weight of the attention supervision (heads of the last layer look at what each part of the answer is "
          "about: the target element, the goal and the gripper, each waypoint's object)");
ABSL_FLAG(int, attention_layer, -1,
          "Decoder layer whose heads --attention_loss supervises (from 0; negative from the end, -1 = last)");
ABSL_FLAG(double, position_loss, 0,
          "Weight of a read-out of where each attention pointer's item is from its head's output (0 = off)");
ABSL_FLAG(double, mark_loss, 0,
          "Weight of a read-out of the target's mark number (0-9) from the pointer head's output on click screens "
          "after the --marks_first and --labels_next phases (needs --attention_loss > 0; 0 = off)");
ABSL_FLAG(double, look_loss, 0,
          "Weight of read-outs of how the pointed widget looks (kind, shape and colour; label) from the pointer "
          "head's output on questions about one widget, and of whether the gripper is open or closed from the "
          "gripper head's output on robot frames, after the --marks_first and --labels_next phases (needs "
          "--attention_loss > 0; 0 = off)");
ABSL_FLAG(double, word_loss, 0,
          "Weight of the word attention supervision (the same heads, in --word_layer, look at the prompt words "
          "naming what they look for: \"red\" for the red block, \"Settings\"); 0 = off");
ABSL_FLAG(int, word_layer, 1, "Decoder layer whose heads --word_loss supervises (from 0; negative from the end)");
ABSL_FLAG(double, ground_loss, 0,
          "Weight of the grounding supervision (the same heads, in --ground_layer, at the prompt words naming a "
          "thing, look at that thing's cells); 0 = off");
ABSL_FLAG(int, ground_layer, 0,
          "Decoder layer whose heads --ground_loss supervises (from 0; negative from the end; before --word_layer)");
ABSL_FLAG(double, offset_loss, 0,
          "Weight of a read-out, on robot frames, of where the goal is from the gripper (per axis, in steps, "
          "within +-2) from the final hidden state where the model predicts the x, y and gripper tokens; 0 = off");
ABSL_FLAG(double, bin_smoothing, 0,
          "Robot frames: train each action token of a normalised dimension (the moves, not the gripper) toward a "
          "Gaussian over its neighbouring bins, of this standard deviation in bins (of 256 over -1..1), instead "
          "of its one bin; 0 = off");
ABSL_FLAG(bool, report_only, false, "Print the held-out report of the checkpoint in --out and exit");
ABSL_FLAG(bool, bf16, true,
          "Linear layers multiply in bfloat16 (float32 weights and accumulation) where the CPU has bfloat16 dot "
          "products (AVX512-BF16); elsewhere they multiply in float32, as bfloat16 is emulated there and about 20 "
          "times slower");
ABSL_FLAG(bool, bf16_vision, true,
          "With --bf16: the vision tower's and the projector's linears multiply in bfloat16 too (false: in "
          "float32, and only the decoder's in bfloat16)");
ABSL_FLAG(int64_t, profile_steps, 0,
          "Record libtorch's operator profile of this many steps (after 10 warm-up steps) into "
          "<out>/profile.json, a Chrome trace (chrome://tracing, Perfetto) with each call's input shapes");
ABSL_FLAG(int, threads, 0, "libtorch threads (0 = one per core)");
ABSL_FLAG(double, layer_scale_init, 1e-6,
          "New models: initial ConvNeXt layer scale (timm's default 1e-6 starts every block as the identity)");
ABSL_FLAG(std::vector<std::string>, tower_dims, std::vector<std::string>({"24", "48", "96", "192"}),
          "New models: ConvNeXt stage widths");
ABSL_FLAG(std::vector<std::string>, tower_depths, std::vector<std::string>({"1", "1", "2", "1"}),
          "New models: ConvNeXt blocks per stage");
ABSL_FLAG(int, decoder_layers, 4, "New models: Llama decoder layers (1-32)");
ABSL_FLAG(int, max_crops, 2,
          "New models: the most 224-pixel any-res crops an image is cut into (1-8; with 4 a 256-pixel tabletop "
          "frame gets 2x2 crops, four times the tower cells)");

namespace {

namespace fs = std::filesystem;
using nlohmann::json;

const char* KindName(magma::train::TaskKind kind) {
  switch (kind) {
    case magma::train::TaskKind::kClick: return "click";
    case magma::train::TaskKind::kAct: return "act";
    case magma::train::TaskKind::kPath: return "path";
    case magma::train::TaskKind::kQuestion: return "question";
  }
  return "?";
}

// The normalised value of an action token; 0 (no move) for any other token.
double ActionValue(const magma::agent::ActionCodec& codec, int64_t id) {
  return codec.IsActionToken(id) ? codec.BinCentre(codec.BinOfToken(id)) : 0.0;
}

int Fail(const absl::Status& s) {
  std::cerr << "error: " << s.ToString() << "\n";
  return 1;
}

absl::StatusOr<std::vector<int64_t>> Integers(const std::vector<std::string>& texts, const char* flag) {
  std::vector<int64_t> out;
  for (const std::string& t : texts) {
    int64_t v = 0;
    if (!absl::SimpleAtoi(t, &v) || v < 1) {
      return absl::InvalidArgumentError(absl::StrCat("--", flag, ": '", t, "' is not a positive integer"));
    }
    out.push_back(v);
  }
  return out;
}

// The architecture of the embedded model: small enough to train on two
// cores, the same module layout as Magma-8B. The tower's stages come from
// --tower_dims / --tower_depths (default: four stages; the shipped model has
// the five of its card); five stages start from a 2x2 stem, so that the
// first runs at half the resolution of a 4x4 stem's and small text keeps its
// strokes.
absl::StatusOr<magma::model::Preset> AgentPreset(int64_t vocab) {
  magma::model::Preset p;
  p.name = "agent-tiny";
  auto dims = Integers(absl::GetFlag(FLAGS_tower_dims), "tower_dims");
  auto depths = Integers(absl::GetFlag(FLAGS_tower_depths), "tower_depths");
  if (!dims.ok()) return dims.status();
  if (!depths.ok()) return depths.status();
  if (dims->size() != depths->size() || (dims->size() != 4 && dims->size() != 5)) {
    return absl::InvalidArgumentError(
        "--tower_dims and --tower_depths need four stages each (stem patch 4) or five (stem patch 2)");
  }
  p.vision_depths = *depths;
  p.vision_dims = *dims;
  p.stem_patch = dims->size() == 4 ? 4 : 2;
  p.img_size = 224;
  p.layer_scale_init = absl::GetFlag(FLAGS_layer_scale_init);
  p.max_crops = absl::GetFlag(FLAGS_max_crops);
  p.hidden = 256;
  p.layers = absl::GetFlag(FLAGS_decoder_layers);
  p.heads = 4;
  p.kv_heads = 2;
  p.intermediate = 640;
  p.vocab = vocab;
  p.max_positions = 1024;
  p.storage_dtype = "F32";
  return p;
}

absl::Status CreateModel(const std::string& dir, uint64_t seed) {
  namespace tk = magma::tokenizer;
  // The tokenizer first: its size (learned pieces + 256 reserved action
  // pieces at the top) and its <image> id fix the model's vocabulary.
  const std::string tmp = dir + "/.tokenizer";
  tk::SpmTrainOptions so;
  so.vocab_size = 1000;
  so.reserved_pieces = 256;
  if (auto s = tk::TrainSentencePiece(magma::train::SyntheticTasks::CorpusTexts(2000), so, tmp); !s.ok()) return s;
  auto t = tk::LoadTokenizer(tmp);
  if (!t.ok()) return t.status();
  auto made = AgentPreset((*t)->vocab_size());
  if (!made.ok()) return made.status();
  magma::model::Preset preset = *std::move(made);
  preset.image_token_index = (*t)->special_ids().image;
  preset.write_tokenizer = false;
  if (auto s = magma::model::WriteRandomModel(preset, seed, dir); !s.ok()) return s;
  for (const char* f : {"tokenizer.model", "tokenizer_config.json"}) fs::rename(fs::path(tmp) / f, fs::path(dir) / f);
  fs::remove_all(tmp);
  json stats = {{"tabletop", {{"action", {{"q01", {-1, -1, -1, -1, -1, -1, 0}},
                                          {"q99", {1, 1, 1, 1, 1, 1, 1}},
                                          {"mask", {true, true, true, true, true, true, false}}}}}}};
  std::ofstream(fs::path(dir) / "dataset_statistics.json") << stats.dump(2) << "\n";
  return absl::OkStatus();
}

// Whether linear layers multiply in bfloat16: asked for (--bf16) and fast on
// this CPU. Without native dot products libtorch emulates bfloat16 products,
// which made a training step about 20 times slower than in float32.
bool TrainInBf16() { return absl::GetFlag(FLAGS_bf16) && magma::model::HasAvx512Bf16(); }
bool VisionInBf16() { return TrainInBf16() && absl::GetFlag(FLAGS_bf16_vision); }

// A checkpoint's files. SaveCheckpoint writes each to "<name>.tmp", then
// creates kCommitMark, then renames them into place and removes the mark:
// a run killed before the mark leaves only .tmp files (dropped by the next
// start), one killed after it leaves complete files whose renames the next
// start finishes (FinishCheckpoint). Either way the directory holds one
// step's weights, optimizer state and trainer_state.json.
constexpr const char* kCheckpointFiles[] = {"model.safetensors", "optimizer.pt", "trainer_state.json"};
constexpr char kCommitMark[] = "checkpoint.commit";

// Completes or drops a checkpoint that a killed run left half-written.
absl::Status FinishCheckpoint(const std::string& dir) {
  std::error_code ec;
  const bool committed = fs::exists(fs::path(dir) / kCommitMark, ec);
  for (const char* f : kCheckpointFiles) {
    const fs::path tmp = fs::path(dir) / (std::string(f) + ".tmp");
    if (!fs::exists(tmp, ec)) continue;
    if (committed) {
      fs::rename(tmp, fs::path(dir) / f, ec);
    } else {
      fs::remove(tmp, ec);
    }
    if (ec) return absl::InternalError(absl::StrCat("cannot finish the checkpoint in ", dir, ": ", ec.message()));
  }
  if (committed && fs::exists(fs::path(dir) / "model.safetensors", ec)) {
    // One file replaces the initial shards (the loader prefers an index).
    for (const std::string& f : magma::model::CheckpointFilesIn(dir)) {
      const std::string name = fs::path(f).filename().string();
      if (name.rfind("model-", 0) != 0 && name != "model.safetensors.index.json") continue;
      if (!fs::remove(f, ec) && ec) {
        return absl::InternalError(absl::StrCat("cannot finish the checkpoint in ", dir, ": ", ec.message()));
      }
    }
  }
  fs::remove(fs::path(dir) / kCommitMark, ec);
  if (ec) return absl::InternalError(absl::StrCat("cannot finish the checkpoint in ", dir, ": ", ec.message()));
  return absl::OkStatus();
}

absl::Status SaveCheckpoint(magma::model::MagmaModel& model, const magma::model::Trainer& trainer,
                            const std::string& dir, int64_t step, double loss, double seconds) {
  if (auto s = model.SaveWeights(dir + "/model.safetensors.tmp"); !s.ok()) return s;
  // The optimizer state, for --resume (not needed to serve the model).
  if (auto s = trainer.SaveState(dir + "/optimizer.pt.tmp"); !s.ok()) return s;
  const json state = {{"step", step},
                      {"loss", loss},
                      {"steps", absl::GetFlag(FLAGS_steps)},
                      {"batch", absl::GetFlag(FLAGS_batch)},
                      {"lr", absl::GetFlag(FLAGS_lr)},
                      {"warmup", absl::GetFlag(FLAGS_warmup)},
                      {"seed", absl::GetFlag(FLAGS_seed)},
                      {"bf16", TrainInBf16()},
                      {"bf16_vision", VisionInBf16()},
                      {"train_seconds", seconds}};
  std::ofstream out(fs::path(dir) / "trainer_state.json.tmp");
  out << state.dump(2) << "\n";
  out.close();
  // Every file complete before the mark: a set that is not is dropped.
  bool complete = static_cast<bool>(out);
  for (const char* f : kCheckpointFiles) complete = complete && fs::exists(fs::path(dir) / (std::string(f) + ".tmp"));
  if (complete) {
    std::ofstream mark(fs::path(dir) / kCommitMark);
    mark.close();
    complete = static_cast<bool>(mark);
  }
  if (!complete) {
    std::error_code ec;
    fs::remove(fs::path(dir) / kCommitMark, ec);
    (void)FinishCheckpoint(dir);  // drops the .tmp files
    return absl::InternalError(absl::StrCat("cannot write the checkpoint of step ", step, " in ", dir));
  }
  return FinishCheckpoint(dir);
}

// Takes <dir>/magma-train.lock for the rest of the process, so that a
// second magma-train on the same directory (which would drop the first
// one's checkpoint files as half-written) is refused.
absl::Status LockRun(const std::string& dir) {
  static int fd = -1;
  if (fd >= 0) return absl::OkStatus();
  const std::string path = (fs::path(dir) / "magma-train.lock").string();
  const int f = open(path.c_str(), O_CREAT | O_RDWR | O_CLOEXEC, 0644);
  if (f < 0) return absl::InternalError(absl::StrCat("cannot open ", path, ": ", std::strerror(errno)));
  if (flock(f, LOCK_EX | LOCK_NB) != 0) {
    close(f);
    return absl::FailedPreconditionError(absl::StrCat("another magma-train is using ", dir));
  }
  fd = f;
  return absl::OkStatus();
}

// The run a checkpoint directory holds, from its trainer_state.json.
struct SavedRun {
  int64_t step = 0;
  double train_seconds = 0;
  std::optional<int64_t> batch;
  std::optional<uint64_t> seed;
  std::optional<int64_t> steps;
};

absl::StatusOr<SavedRun> ReadSavedRun(const std::string& dir) {
  const fs::path path = fs::path(dir) / "trainer_state.json";
  std::ifstream in(path);
  if (!in) return absl::NotFoundError(absl::StrCat("no trainer_state.json in ", dir));
  const json state = json::parse(in, nullptr, false);
  if (!state.is_object() || !state.contains("step") || !state["step"].is_number_unsigned()) {
    return absl::DataLossError(absl::StrCat(path.string(), " is not a trainer state (no step)"));
  }
  SavedRun run;
  run.step = state["step"].get<int64_t>();
  if (state.contains("train_seconds") && state["train_seconds"].is_number()) {
    run.train_seconds = state["train_seconds"].get<double>();
  }
  if (state.contains("batch") && state["batch"].is_number_integer()) run.batch = state["batch"].get<int64_t>();
  if (state.contains("seed") && state["seed"].is_number_unsigned()) run.seed = state["seed"].get<uint64_t>();
  if (state.contains("steps") && state["steps"].is_number_integer()) run.steps = state["steps"].get<int64_t>();
  return run;
}

// The steps of the last `n` checkpoints of a run of `steps` steps that
// checkpoints every `every` steps and at its end, oldest first; empty if the
// run writes fewer than `n`.
std::vector<int64_t> LastCheckpointSteps(int64_t steps, int64_t every, int64_t n) {
  std::vector<int64_t> out;
  if (n <= 0 || steps <= 0) return out;
  out.push_back(steps);
  for (int64_t m = (steps - 1) / every; m >= 1 && static_cast<int64_t>(out.size()) < n; --m) out.push_back(m * every);
  if (static_cast<int64_t>(out.size()) < n) return {};
  std::reverse(out.begin(), out.end());
  return out;
}

fs::path KeptWeights(const std::string& dir, int64_t step) {
  return fs::path(dir) / "kept" / absl::StrCat("step-", step, ".safetensors");
}

// Keeps a copy of the checkpoint's weights for averaging.
absl::Status KeepWeights(const std::string& dir, int64_t step) {
  const fs::path to = KeptWeights(dir, step), tmp = to.string() + ".tmp";
  std::error_code ec;
  fs::create_directories(to.parent_path(), ec);
  if (!ec) fs::copy_file(fs::path(dir) / "model.safetensors", tmp, fs::copy_options::overwrite_existing, ec);
  if (!ec) fs::rename(tmp, to, ec);
  if (ec) {
    return absl::InternalError(
        absl::StrCat("cannot keep the weights of step ", step, " in ", to.string(), ": ", ec.message()));
  }
  return absl::OkStatus();
}

// Writes <dir>/averaged: the files a server needs, with the mean of the kept
// weights of `steps`, and the run's trainer_state.json plus "averaged_steps"
// (without "loss", the final weights' training loss). Nothing of it is left
// behind on error.
absl::Status WriteAveraged(const std::string& dir, const std::vector<int64_t>& steps) {
  std::vector<std::string> inputs;
  for (int64_t step : steps) inputs.push_back(KeptWeights(dir, step).string());
  const fs::path tmp = fs::path(dir) / "averaged.tmp", out = fs::path(dir) / "averaged";
  auto write = [&]() -> absl::Status {
    std::error_code ec;
    fs::remove_all(tmp, ec);
    fs::create_directories(tmp, ec);
    for (const char* f : {"config.json", "preprocessor_config.json", "tokenizer.model", "tokenizer_config.json",
                          "dataset_statistics.json"}) {
      if (!ec && fs::exists(fs::path(dir) / f, ec)) fs::copy_file(fs::path(dir) / f, tmp / f, ec);
    }
    if (ec) return absl::InternalError(absl::StrCat("cannot write ", tmp.string(), ": ", ec.message()));
    if (auto s = magma::model::AverageSafetensors(inputs, (tmp / "model.safetensors").string()); !s.ok()) return s;
    std::ifstream in(fs::path(dir) / "trainer_state.json");
    json state = json::parse(in, nullptr, false);
    if (!state.is_object()) return absl::DataLossError(absl::StrCat("unreadable ", dir, "/trainer_state.json"));
    state.erase("loss");
    state["averaged_steps"] = steps;
    std::ofstream st(tmp / "trainer_state.json");
    st << state.dump(2) << "\n";
    st.close();
    if (!st) return absl::InternalError(absl::StrCat("cannot write ", (tmp / "trainer_state.json").string()));
    fs::remove_all(out, ec);
    if (!ec) fs::rename(tmp, out, ec);
    if (ec) return absl::InternalError(absl::StrCat("cannot write ", out.string(), ": ", ec.message()));
    return absl::OkStatus();
  };
  absl::Status s = write();
  if (!s.ok()) {
    std::error_code ec;
    fs::remove_all(tmp, ec);
  }
  return s;
}

// Before a resumed run trains: every kept checkpoint the average needs from
// before `start_step` must be there (the one at `start_step` is the weights
// in `dir`, so it is kept again if missing).
absl::Status CheckKeptWeights(const std::string& dir, int64_t start_step, int64_t steps,
                              const std::vector<int64_t>& averaged) {
  if (start_step > steps) {
    return absl::InvalidArgumentError(
        absl::StrCat("--average_last: the checkpoint in ", dir, " is at step ", start_step, ", past --steps ", steps));
  }
  for (int64_t step : averaged) {
    std::error_code ec;
    if (step > start_step || fs::exists(KeptWeights(dir, step), ec)) continue;
    if (step == start_step) {
      if (auto s = KeepWeights(dir, step); !s.ok()) return s;
      continue;
    }
    return absl::FailedPreconditionError(
        absl::StrCat("--average_last: no kept weights of step ", step, " (", KeptWeights(dir, step).string(),
                     "); weights are kept from the start of a run with --average_last"));
  }
  return absl::OkStatus();
}

}  // namespace

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage("magma-train --out DIR [--steps N] [--batch B] [--resume]");
  absl::ParseCommandLine(argc, argv);
  (void)magma::log::SetLevel("warn");
  const std::string dir = absl::GetFlag(FLAGS_out);
  if (dir.empty()) return Fail(absl::InvalidArgumentError("--out is required"));
  auto table = magma::tools::TableWorldFromFlags();
  if (!table.ok()) return Fail(table.status());  // before anything is written
  const magma::worlds::RobotWorldOptions robot = *table;
  magma::model::ConfigureRuntime(absl::GetFlag(FLAGS_threads));
  magma::model::UseHeapForLargeBlocks();
  magma::model::TrainOptions to;
  to.learning_rate = absl::GetFlag(FLAGS_lr);
  to.warmup_steps = absl::GetFlag(FLAGS_warmup);
  to.total_steps = absl::GetFlag(FLAGS_steps);
  to.seed = absl::GetFlag(FLAGS_seed);
  if (absl::GetFlag(FLAGS_marks_first) < 0 || absl::GetFlag(FLAGS_labels_next) < 0) {
    return Fail(absl::InvalidArgumentError("--marks_first and --labels_next must be >= 0"));
  }
  magma::train::CellTargetOptions cell_targets;
  cell_targets.marks_on_things = absl::GetFlag(FLAGS_marks_on_things);
  cell_targets.labels_on_text = absl::GetFlag(FLAGS_labels_on_text);
  cell_targets.gripper_from_cells = absl::GetFlag(FLAGS_gripper_from_cells);
  const magma::train::ActFrameOptions act_frames{absl::GetFlag(FLAGS_near_goal_quarters),
                                                 absl::GetFlag(FLAGS_missed_grasp_quarters),
                                                 absl::GetFlag(FLAGS_arrival_quarters)};
  if (act_frames.near_goal_quarters < 1 || act_frames.near_goal_quarters > 3) {
    return Fail(absl::InvalidArgumentError(
        absl::StrCat("--near_goal_quarters must be 1, 2 or 3; got ", act_frames.near_goal_quarters)));
  }
  if (act_frames.missed_grasp_quarters < 0 || act_frames.missed_grasp_quarters > 4) {
    return Fail(absl::InvalidArgumentError(
        absl::StrCat("--missed_grasp_quarters must be between 0 and 4; got ", act_frames.missed_grasp_quarters)));
  }
  if (act_frames.arrival_quarters < 0 || act_frames.arrival_quarters > 4) {
    return Fail(absl::InvalidArgumentError(
        absl::StrCat("--arrival_quarters must be between 0 and 4; got ", act_frames.arrival_quarters)));
  }
  if (absl::GetFlag(FLAGS_max_crops) < 1 || absl::GetFlag(FLAGS_max_crops) > 8) {
    return Fail(absl::InvalidArgumentError(
        absl::StrCat("--max_crops must be between 1 and 8; got ", absl::GetFlag(FLAGS_max_crops))));
  }
  if (absl::GetFlag(FLAGS_decoder_layers) < 1 || absl::GetFlag(FLAGS_decoder_layers) > 32) {
    return Fail(absl::InvalidArgumentError(
        absl::StrCat("--decoder_layers must be between 1 and 32; got ", absl::GetFlag(FLAGS_decoder_layers))));
  }
  if (absl::GetFlag(FLAGS_profile_steps) < 0) return Fail(absl::InvalidArgumentError("--profile_steps must be >= 0"));
  const int64_t every = absl::GetFlag(FLAGS_checkpoint_every), average_last = absl::GetFlag(FLAGS_average_last);
  if (every < 1) return Fail(absl::InvalidArgumentError("--checkpoint_every must be >= 1"));
  if (average_last < 0) return Fail(absl::InvalidArgumentError("--average_last must be >= 0"));
  const std::vector<int64_t> averaged_steps = LastCheckpointSteps(absl::GetFlag(FLAGS_steps), every, average_last);
  if (average_last > 0 && averaged_steps.empty()) {
    return Fail(absl::InvalidArgumentError(absl::StrCat(
        "--average_last ", average_last, ": --steps ", absl::GetFlag(FLAGS_steps), " with --checkpoint_every ", every,
        " writes only ", absl::GetFlag(FLAGS_steps) > 0 ? (absl::GetFlag(FLAGS_steps) - 1) / every + 1 : 0,
        " checkpoints")));
  }
  if (absl::GetFlag(FLAGS_cell_loss) > 0) {
    to.cell_classes = magma::train::SyntheticTasks::CellClasses();
    to.cell_offset_items = magma::train::SyntheticTasks::CellOffsetItems(cell_targets);
    to.cell_loss_weight = absl::GetFlag(FLAGS_cell_loss);
    for (const std::string& t : absl::GetFlag(FLAGS_cell_head_weights)) {
      double w = 0;
      if (!absl::SimpleAtod(t, &w)) {
        return Fail(absl::InvalidArgumentError(absl::StrCat("--cell_head_weights: '", t, "' is not a number")));
      }
      to.cell_head_weights.push_back(w);
    }
    to.cell_offset_weight = absl::GetFlag(FLAGS_cell_offset_weight);
    if (cell_targets.gripper_from_cells) {
      to.cell_offset_item_weights = {to.cell_offset_weight, to.cell_offset_weight,
                                     absl::GetFlag(FLAGS_gripper_from_cells_weight).value_or(kGripperFromCellsWeight)};
    }
    to.cell_where_weight = absl::GetFlag(FLAGS_cell_where_weight);
    if (absl::GetFlag(FLAGS_marks_first) > 0) {
      to.solo_cell_phases.push_back({magma::train::SyntheticTasks::kMarkCellHead, absl::GetFlag(FLAGS_marks_first)});
    }
    if (absl::GetFlag(FLAGS_labels_next) > 0) {
      to.solo_cell_phases.push_back({magma::train::SyntheticTasks::kLabelCellHead, absl::GetFlag(FLAGS_labels_next)});
    }
  } else if (!absl::GetFlag(FLAGS_cell_head_weights).empty() || absl::GetFlag(FLAGS_marks_first) > 0 ||
             absl::GetFlag(FLAGS_labels_next) > 0 || cell_targets.gripper_from_cells) {
    return Fail(
        absl::InvalidArgumentError("--cell_head_weights, --marks_first, --labels_next and "
                                   "--gripper_from_cells need the cell heads (--cell_loss > 0)"));
  }
  if (!cell_targets.gripper_from_cells && absl::GetFlag(FLAGS_gripper_from_cells_weight).has_value()) {
    return Fail(absl::InvalidArgumentError("--gripper_from_cells_weight needs --gripper_from_cells"));
  }
  to.clip_norm = absl::GetFlag(FLAGS_clip_norm);
  to.attention_loss_weight = absl::GetFlag(FLAGS_attention_loss);
  to.attention_layer = absl::GetFlag(FLAGS_attention_layer);
  to.position_loss_weight = absl::GetFlag(FLAGS_position_loss);
  to.mark_loss_weight = absl::GetFlag(FLAGS_mark_loss);
  to.look_loss_weight = absl::GetFlag(FLAGS_look_loss);
  if (to.look_loss_weight > 0) to.look_classes = magma::train::SyntheticTasks::LookClasses();
  to.word_loss_weight = absl::GetFlag(FLAGS_word_loss);
  to.word_layer = absl::GetFlag(FLAGS_word_layer);
  to.ground_loss_weight = absl::GetFlag(FLAGS_ground_loss);
  to.ground_layer = absl::GetFlag(FLAGS_ground_layer);
  to.offset_loss_weight = absl::GetFlag(FLAGS_offset_loss);
  to.bin_smoothing = absl::GetFlag(FLAGS_bin_smoothing);
  if (absl::GetFlag(FLAGS_batch) < 1) return Fail(absl::InvalidArgumentError("--batch must be >= 1"));
  if (absl::GetFlag(FLAGS_steps) < 1) return Fail(absl::InvalidArgumentError("--steps must be >= 1"));
  for (const auto& [flag, weight] : {std::pair<const char*, double>{"cell_loss", absl::GetFlag(FLAGS_cell_loss)},
                                     {"attention_loss", to.attention_loss_weight},
                                     {"position_loss", to.position_loss_weight},
                                     {"word_loss", to.word_loss_weight},
                                     {"ground_loss", to.ground_loss_weight}}) {
    if (!(weight >= 0))
      return Fail(absl::InvalidArgumentError(absl::StrCat("--", flag, " must be >= 0; got ", weight)));
  }
  auto mix = magma::train::ParseTaskMix(absl::GetFlag(FLAGS_mix));
  if (!mix.ok()) return Fail(mix.status());
  int64_t start_step = 0;
  double prior_seconds = 0;  // training time before a resume
  const bool existing = absl::GetFlag(FLAGS_resume) || absl::GetFlag(FLAGS_report_only);
  if (fs::exists(dir)) {
    if (auto s = LockRun(dir); !s.ok()) return Fail(s);
    if (auto s = FinishCheckpoint(dir); !s.ok()) return Fail(s);
  }
  const std::vector<std::string> old_files = magma::model::CheckpointFilesIn(dir);
  if (existing) {
    auto saved = ReadSavedRun(dir);
    if (!saved.ok()) {
      return Fail(absl::Status(
          saved.status().code(),
          absl::StrCat(absl::GetFlag(FLAGS_report_only) ? "--report_only: " : "--resume: ", saved.status().message())));
    }
    start_step = saved->step;
    prior_seconds = saved->train_seconds;
    if (!absl::GetFlag(FLAGS_report_only)) {
      // The data stream is a function of the seed, the batch and the step:
      // another seed or batch would not continue it.
      if (saved->batch.has_value() && *saved->batch != absl::GetFlag(FLAGS_batch)) {
        return Fail(absl::InvalidArgumentError(
            absl::StrCat("--resume: --batch ", absl::GetFlag(FLAGS_batch), " differs from the run's ", *saved->batch)));
      }
      if (saved->seed.has_value() && *saved->seed != absl::GetFlag(FLAGS_seed)) {
        return Fail(absl::InvalidArgumentError(
            absl::StrCat("--resume: --seed ", absl::GetFlag(FLAGS_seed), " differs from the run's ", *saved->seed)));
      }
      if (!averaged_steps.empty()) {
        if (auto s = CheckKeptWeights(dir, start_step, absl::GetFlag(FLAGS_steps), averaged_steps); !s.ok()) {
          return Fail(s);
        }
      }
      if (absl::GetFlag(FLAGS_steps) < start_step) {
        return Fail(
            absl::InvalidArgumentError(absl::StrCat("--resume: the checkpoint in ", dir, " is at step ", start_step,
                                                    ", past --steps ", absl::GetFlag(FLAGS_steps))));
      }
      if (saved->steps.has_value() && *saved->steps != absl::GetFlag(FLAGS_steps)) {
        std::cout << "the run was started for " << *saved->steps << " steps: its schedule now ends at step "
                  << absl::GetFlag(FLAGS_steps) << "\n";
      }
    }
    std::cout << "resuming at step " << start_step << "\n";
  } else {
    if (!old_files.empty() && !absl::GetFlag(FLAGS_overwrite)) {
      return Fail(absl::FailedPreconditionError(absl::StrCat(
          dir, fs::exists(fs::path(dir) / "trainer_state.json") ? " holds a training run" : " holds a checkpoint",
          ": continue it with --resume or replace it with --overwrite")));
    }
    // A new model has the preset's layers: check the options against them,
    // and the tower flags, before anything is written (a resumed one is
    // checked on load).
    auto preset = AgentPreset(0);
    if (!preset.ok()) return Fail(preset.status());
    if (auto s = magma::model::CheckTrainOptions(to, preset->layers); !s.ok()) return Fail(s);
    fs::create_directories(dir);
    if (auto s = LockRun(dir); !s.ok()) return Fail(s);
    // The new model is made beside what an earlier run left (its
    // checkpoint, kept and averaged weights), which is replaced only once
    // the new one is complete.
    std::error_code ec;
    const fs::path fresh = fs::path(dir) / ".new-model";
    fs::remove_all(fresh, ec);
    if (ec || !fs::create_directories(fresh, ec)) {
      return Fail(absl::InternalError(absl::StrCat("cannot make ", fresh.string(), ": ", ec.message())));
    }
    if (auto s = CreateModel(fresh.string(), absl::GetFlag(FLAGS_seed)); !s.ok()) {
      fs::remove_all(fresh, ec);
      return Fail(s);
    }
    if (auto s = magma::model::RemoveFiles(old_files); !s.ok()) return Fail(s);
    fs::remove_all(fs::path(dir) / "kept", ec);
    fs::remove_all(fs::path(dir) / "averaged", ec);
    std::vector<fs::path> made;
    for (const auto& entry : fs::directory_iterator(fresh)) made.push_back(entry.path());
    for (const fs::path& f : made) {
      fs::rename(f, fs::path(dir) / f.filename(), ec);
      if (ec) return Fail(absl::InternalError(absl::StrCat("cannot move ", f.string(), ": ", ec.message())));
    }
    fs::remove_all(fresh, ec);
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
  if (to.bin_smoothing != 0) {
    // The action bins are the top of the model's vocabulary.
    if (!ctx->action_codec.has_value() || ctx->action_codec->last_token() != (*model)->vocab_size() - 1) {
      return Fail(absl::FailedPreconditionError("--bin_smoothing needs action tokens at the top of the vocabulary"));
    }
    to.ordered_ids = ctx->action_codec->last_token() - ctx->action_codec->first_token() + 1;
  }
  magma::worlds::UiWorldOptions ui;
  magma::train::QuestionOptions questions;
  questions.absent_to_start = absl::GetFlag(FLAGS_absent_to_start);
  const magma::train::SyntheticTasks tasks(&*ctx, ui, robot, cell_targets, act_frames, questions);

  auto trainer = magma::model::Trainer::Create(model->get(), to);
  if (!trainer.ok()) return Fail(trainer.status());
  if (start_step > 0) {
    if (auto s = (*trainer)->RestoreState((fs::path(dir) / "optimizer.pt").string()); !s.ok()) return Fail(s);
    if ((*trainer)->step() != start_step) {
      return Fail(absl::DataLossError("optimizer.pt and trainer_state.json disagree on the step"));
    }
  }
  if (absl::GetFlag(FLAGS_bf16) && !TrainInBf16()) {
    std::cout << "this CPU has no bfloat16 dot products (AVX512-BF16): linear layers multiply in float32\n";
  }
  (*model)->SetBf16TrainingMatmuls(TrainInBf16(), VisionInBf16());
  const int batch = absl::GetFlag(FLAGS_batch);
  const uint64_t data_seed = absl::GetFlag(FLAGS_seed) * 1000003;
  const auto t0 = std::chrono::steady_clock::now();
  double ema = 0;
  // Held-out examples (seeds far from the training stream) for teacher-forced
  // accuracy per task: exact = every answer token right.
  std::vector<magma::train::SyntheticExample> held_out;
  for (uint64_t i = 0; i < 160; ++i) {
    auto e = tasks.Mixed((uint64_t{1} << 40) + i);
    if (e.ok()) held_out.push_back(*std::move(e));
  }
  // Held-out robot frames for the report's gripper decisions.
  std::vector<magma::train::SyntheticExample> gripper_frames;
  auto report = [&](int64_t step) -> absl::Status {
    std::vector<magma::model::TrainExample> batch;
    for (const auto& e : held_out) batch.push_back(e.example);
    std::map<std::string, std::pair<int, int>> exact;   // kind -> (right, total)
    std::map<std::string, std::pair<int, int>> tokens;  // kind -> (right, total)
    // Robot actions: of the x and y moves whose target is at least half a
    // step, how many the predicted token sends the same way.
    std::pair<int, int> heading{0, 0};
    for (size_t first = 0; first < batch.size(); first += 16) {
      const std::vector<magma::model::TrainExample> part(batch.begin() + first,
                                                         batch.begin() + std::min(batch.size(), first + 16));
      auto predicted = (*trainer)->Predict(part);
      if (!predicted.ok()) return predicted.status();
      for (size_t i = 0; i < part.size(); ++i) {
        const auto& e = held_out[first + i];
        const char* kind = KindName(e.kind);
        int right = 0;
        for (size_t t = 0; t < part[i].target_ids.size(); ++t) right += (*predicted)[i][t] == part[i].target_ids[t];
        exact[kind].first += right == static_cast<int>(part[i].target_ids.size());
        ++exact[kind].second;
        tokens[kind].first += right;
        tokens[kind].second += static_cast<int>(part[i].target_ids.size());
        if (e.kind == magma::train::TaskKind::kAct && ctx->action_codec.has_value()) {
          const auto& codec = *ctx->action_codec;
          for (size_t d = 0; d < 2 && d < part[i].target_ids.size(); ++d) {
            const double want = ActionValue(codec, part[i].target_ids[d]);
            if (std::abs(want) < 0.5) continue;
            const int64_t got_id = (*predicted)[i][d];
            heading.first += ActionValue(codec, got_id) * want > 0;
            ++heading.second;
          }
        }
      }
    }
    if (!to.cell_classes.empty() || to.attention_loss_weight > 0 || to.word_loss_weight > 0 ||
        to.ground_loss_weight > 0 || to.offset_loss_weight > 0) {
      // What the training-only heads see, per task kind (up to 48 held-out
      // examples of each).
      std::map<std::string, std::vector<magma::model::TrainExample>> by_kind;
      for (const auto& e : held_out) by_kind[KindName(e.kind)].push_back(e.example);
      for (const auto& [kind, examples] : by_kind) {
        auto aux = (*trainer)->Auxiliary(std::vector<magma::model::TrainExample>(
            examples.begin(), examples.begin() + std::min<size_t>(examples.size(), 48)));
        if (!aux.ok()) return aux.status();
        std::cout << "  " << kind << ": cell accuracy (what, mark, label, overlay)";
        for (double a : aux->cell_accuracy) std::cout << " " << static_cast<int>(100 * a) << "%";
        std::cout << ", centres off by";
        for (double e : aux->offset_error) std::cout << " " << e;
        std::cout << (aux->offset_error.size() > 2 ? " cells (thing, overlay, gripper from the cell)" : " cells");
        std::cout << ", own position off by " << aux->where_error << " of the crop";
        std::cout << ", pointer heads on their cells " << static_cast<int>(100 * aux->attention_mass) << "%";
        if (aux->head_mass.size() > 1) {
          const char* sep = " (";
          for (size_t h = 0; h < aux->head_mass.size(); ++h) {
            if (aux->head_pointers[h] == 0) continue;
            std::cout << sep << "head " << h << ": " << static_cast<int>(100 * aux->head_mass[h]) << "%";
            if (!std::isnan(aux->head_others[h])) {
              std::cout << " [other things " << static_cast<int>(100 * aux->head_others[h]) << "%]";
            }
            sep = ", ";
          }
          std::cout << ")";
        }
        if (aux->sink_pointers > 0) {
          std::cout << ", on the sink where nothing is there " << static_cast<int>(100 * aux->sink_mass) << "%";
        }
        if (aux->positions > 0) std::cout << ", read where they look to " << aux->position_error;
        if (aux->marks > 0) std::cout << ", read the mark there " << static_cast<int>(100 * aux->mark_accuracy) << "%";
        for (size_t k = 0; k < aux->looks.size(); ++k) {
          if (aux->looks[k] == 0) continue;
          std::cout << (k == 0 ? ", read the look there " : ", the label ")
                    << static_cast<int>(100 * aux->look_accuracy[k]) << "%";
        }
        if (aux->ground_pointers > 0) {
          std::cout << ", naming words on their things " << static_cast<int>(100 * aux->ground_mass) << "%";
          if (aux->ground_positions > 0) std::cout << " (where read there to " << aux->ground_position_error << ")";
        }
        if (aux->word_pointers > 0) {
          std::cout << ", on their words " << static_cast<int>(100 * aux->word_mass) << "% (evenness "
                    << static_cast<int>(100 * aux->word_least) << "%";
          if (aux->word_positions > 0) std::cout << ", where read from them to " << aux->word_position_error;
          std::cout << ")";
        }
        if (aux->offset_readout_values > 0) {
          std::cout << ", goal offset read to " << aux->offset_readout_error << " steps";
        }
        std::cout << std::endl;
      }
    }
    // The robot's gripper decisions on more held-out frames: the gripper
    // token where the expert closes an open gripper (a grasp), opens a
    // closed one (a release, or after a missed grasp) and keeps it.
    if (ctx->action_codec.has_value()) {
      const auto& codec = *ctx->action_codec;
      std::pair<int, int> closes{0, 0}, opens{0, 0}, keep{0, 0};
      // Frames 0.03-0.06 and 0.06-0.12 from the goal where the expert still
      // moves: how often the model stays (both moves zero) instead.
      std::pair<int, int> stays_short[2] = {{0, 0}, {0, 0}};
      // With an expert that grips on the move: the model's moves (tokens 0,
      // 1) where it closes an open gripper with a move, against those where
      // it moves on within 0.25 of its goal, with the frames of each for the
      // pointer heads' position read-outs.
      struct MoveTally {
        int exact = 0;     // both moves the expert's
        int same_way = 0;  // both moves with the expert's sign
        std::vector<magma::model::TrainExample> frames;
      };
      MoveTally grip_moves, near_moves;
      // Which way an action token moves on its axis: -1, 0 (less than half
      // of the expert's smallest move, a quarter step with half steps) or 1.
      const double least = 0.5 / robot.move_divisions;
      auto way = [&](int64_t id) {
        const double v = ActionValue(codec, id);
        return v >= least ? 1 : v <= -least ? -1 : 0;
      };
      // Whether an action moves at all on x or y (tokens 0, 1).
      auto moves = [&](int64_t x, int64_t y) { return way(x) != 0 || way(y) != 0; };
      if (gripper_frames.empty()) {  // drawn at the first report, kept for the others
        for (uint64_t i = 0; i < 256; ++i) {
          auto e = tasks.Act((uint64_t{1} << 40) + 1000000 + i);
          if (e.ok()) gripper_frames.push_back(*std::move(e));
        }
      }
      const auto& frames = gripper_frames;
      for (size_t first = 0; first < frames.size(); first += 16) {
        std::vector<magma::model::TrainExample> part;
        for (size_t i = first; i < std::min(frames.size(), first + 16); ++i) part.push_back(frames[i].example);
        auto predicted = (*trainer)->Predict(part);
        if (!predicted.ok()) return predicted.status();
        for (size_t i = 0; i < part.size(); ++i) {
          const auto& e = part[i];
          if (e.pointers.size() < 2 || e.pointers[1].looks.empty() || e.target_ids.size() < 7) continue;
          const bool open_now = e.pointers[1].looks[0] == magma::train::SyntheticTasks::GripperLook(true);
          const bool want_open = ActionValue(codec, e.target_ids[6]) > 0;
          const int64_t got_id = (*predicted)[i][6];
          const bool right = codec.IsActionToken(got_id) && (ActionValue(codec, got_id) > 0) == want_open;
          auto& tally = open_now == want_open ? keep : want_open ? opens : closes;
          tally.first += right;
          ++tally.second;
          const double to_goal = std::hypot(e.pointers[0].x - e.pointers[1].x, e.pointers[0].y - e.pointers[1].y);
          const bool expert_moves = moves(e.target_ids[0], e.target_ids[1]);
          if (expert_moves && to_goal >= 0.03 && to_goal < 0.12) {
            auto& band = stays_short[to_goal < 0.06 ? 0 : 1];
            band.first += !moves((*predicted)[i][0], (*predicted)[i][1]);
            ++band.second;
          }
          const bool closes_now = open_now && !want_open;
          if (expert_moves && (closes_now || (open_now == want_open && to_goal < 0.25))) {
            MoveTally& tally = closes_now ? grip_moves : near_moves;
            tally.exact += (*predicted)[i][0] == e.target_ids[0] && (*predicted)[i][1] == e.target_ids[1];
            tally.same_way +=
                way(e.target_ids[0]) == way((*predicted)[i][0]) && way(e.target_ids[1]) == way((*predicted)[i][1]);
            tally.frames.push_back(e);
          }
        }
      }
      std::cout << "  act gripper token on " << frames.size() << " frames: right where the expert closes an open "
                << "gripper " << closes.first << "/" << closes.second << ", opens a closed one " << opens.first << "/"
                << opens.second << ", keeps it " << keep.first << "/" << keep.second
                << "; stays where the expert moves, 0.03-0.06 from its goal " << stays_short[0].first << "/"
                << stays_short[0].second << ", 0.06-0.12 " << stays_short[1].first << "/" << stays_short[1].second
                << std::endl;
      if (!grip_moves.frames.empty()) {
        // How closely the goal and gripper heads read the positions of what
        // they look at, on each kind of frame (NaN without a position
        // read-out).
        auto read_to = [&](const std::vector<magma::model::TrainExample>& part) -> absl::StatusOr<double> {
          if (part.empty() || to.position_loss_weight <= 0) return std::nan("");
          auto aux = (*trainer)->Auxiliary(part);
          if (!aux.ok()) return aux.status();
          return aux->position_error;
        };
        auto grip_read = read_to(grip_moves.frames);
        auto near_read = read_to(near_moves.frames);
        if (!grip_read.ok()) return grip_read.status();
        if (!near_read.ok()) return near_read.status();
        const size_t grips = grip_moves.frames.size(), nears = near_moves.frames.size();
        std::cout << "  act moves where the expert closes on the move: exact " << grip_moves.exact << "/" << grips
                  << ", the same way on both axes " << grip_moves.same_way << "/" << grips
                  << " (pointers read where they look to " << *grip_read
                  << "); where it moves on within 0.25 of its goal: exact " << near_moves.exact << "/" << nears
                  << ", the same way " << near_moves.same_way << "/" << nears << " (to " << *near_read << ")"
                  << std::endl;
      }
      // Where the goal head (0) looks on the way to the block and while
      // carrying it to the plate, where the held block sits at the gripper.
      if (to.attention_loss_weight > 0) {
        std::cout << "  act goal head on its cells [other things]:";
        for (const bool carry : {false, true}) {
          std::vector<magma::model::TrainExample> part;
          for (size_t i = 0; i < frames.size() && part.size() < 48; ++i) {
            if (frames[i].carrying == carry) part.push_back(frames[i].example);
          }
          if (part.empty()) continue;
          auto aux = (*trainer)->Auxiliary(part);
          if (!aux.ok()) return aux.status();
          if (aux->head_mass.empty() || aux->head_pointers[0] == 0) continue;
          std::cout << (carry ? ", carrying the block to the plate " : " going for the block ")
                    << static_cast<int>(100 * aux->head_mass[0]) << "%";
          if (!std::isnan(aux->head_others[0]))
            std::cout << " [" << static_cast<int>(100 * aux->head_others[0]) << "%]";
          std::cout << " (" << part.size() << " frames)";
        }
        std::cout << std::endl;
      }
    }
    std::cout << "held-out at step " << step << ":";
    for (const auto& [kind, n] : exact) {
      std::cout << " " << kind << " exact " << n.first << "/" << n.second << " tokens "
                << 100.0 * tokens[kind].first / tokens[kind].second << "%";
    }
    if (heading.second > 0) std::cout << " | act heading " << heading.first << "/" << heading.second;
    std::cout << std::endl;
    return absl::OkStatus();
  };

  if (absl::GetFlag(FLAGS_report_only)) {
    if (auto s = report(start_step); !s.ok()) return Fail(s);
    return 0;
  }

  // Batches are rendered on a second thread while the previous step trains.
  auto make_batch = [&](int64_t step) {
    std::vector<magma::model::TrainExample> examples;
    for (int i = 0; i < batch; ++i) {
      auto e = tasks.Mixed(data_seed + static_cast<uint64_t>(step) * batch + i, *mix);
      if (e.ok()) examples.push_back(std::move(e->example));
    }
    return examples;
  };
  const auto policy = absl::GetFlag(FLAGS_prefetch) ? std::launch::async : std::launch::deferred;
  std::future<std::vector<magma::model::TrainExample>> next = std::async(policy, make_batch, start_step);
  double wait_secs = 0;
  // libtorch's operator profiler, with each call's input shapes.
  namespace prof = torch::autograd::profiler;
  const torch::profiler::impl::ProfilerConfig profile_config(torch::profiler::impl::ProfilerState::KINETO,
                                                             /*report_input_shapes=*/true);
  const std::set<torch::profiler::impl::ActivityType> profile_activities{torch::profiler::impl::ActivityType::CPU};
  bool profiling = false;
  auto stop_profile = [&] {
    if (!profiling) return;
    profiling = false;
    // Written as a Chrome trace by hand: Debian's libtorch has no Kineto
    // trace writer.
    const auto result = prof::disableProfiler();
    nlohmann::json events = nlohmann::json::array();
    for (const auto& e : result->events()) {
      nlohmann::json shapes = nlohmann::json::array();
      for (const auto& shape : e.shapes()) shapes.push_back(shape);
      events.push_back({{"name", e.name()},
                        {"ph", "X"},
                        {"ts", e.startUs()},
                        {"dur", e.durationUs()},
                        {"pid", 0},
                        {"tid", e.startThreadId()},
                        {"args", {{"Input Dims", shapes}}}});
    }
    std::ofstream((fs::path(dir) / "profile.json").string()) << nlohmann::json{{"traceEvents", events}}.dump();
  };
  for (int64_t step = start_step; step < absl::GetFlag(FLAGS_steps); ++step) {
    const auto w0 = std::chrono::steady_clock::now();
    std::vector<magma::model::TrainExample> examples = next.get();
    wait_secs += std::chrono::duration<double>(std::chrono::steady_clock::now() - w0).count();
    if (step + 1 < absl::GetFlag(FLAGS_steps)) next = std::async(policy, make_batch, step + 1);
    if (step == start_step + 10 && absl::GetFlag(FLAGS_profile_steps) > 0) {
      prof::prepareProfiler(profile_config, profile_activities);
      prof::enableProfiler(profile_config, profile_activities);
      profiling = true;
    }
    auto loss = (*trainer)->Step(examples);
    if (step + 1 == start_step + 10 + absl::GetFlag(FLAGS_profile_steps)) stop_profile();
    if (!loss.ok()) return Fail(loss.status());
    ema = step == start_step ? *loss : 0.95 * ema + 0.05 * *loss;
    const int64_t done = step + 1 - start_step, left = absl::GetFlag(FLAGS_steps) - step - 1;
    const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    if (done % 10 == 0 || left == 0) {
      std::cout << "step " << step + 1 << "/" << absl::GetFlag(FLAGS_steps) << " loss " << ema << " aux " << (*trainer)->last_aux_loss()
                << " grad norm " << (*trainer)->last_grad_norm() << " lr "
                << (*trainer)->learning_rate() << " | " << secs / done << " s/step, ETA " << left * secs / done / 60
                << " min (data wait " << wait_secs / done << " s/step)" << std::endl;
    }
    if (absl::GetFlag(FLAGS_eval_every) > 0 && ((step + 1) % absl::GetFlag(FLAGS_eval_every) == 0 || left == 0)) {
      if (auto s = report(step + 1); !s.ok()) return Fail(s);
    }
    if ((step + 1) % every == 0 || left == 0) {
      if (auto s = SaveCheckpoint(**model, **trainer, dir, step + 1, ema, prior_seconds + secs); !s.ok()) return Fail(s);
      if (std::find(averaged_steps.begin(), averaged_steps.end(), step + 1) != averaged_steps.end()) {
        if (auto s = KeepWeights(dir, step + 1); !s.ok()) return Fail(s);
      }
    }
  }
  stop_profile();  // a run that ended inside the window
  if (absl::GetFlag(FLAGS_profile_steps) > 0 && absl::GetFlag(FLAGS_steps) <= start_step + 10) {
    std::cerr << "no profile: --profile_steps starts after 10 steps of this run" << std::endl;
  }
  std::cout << "wrote " << dir << "\n";
  if (!averaged_steps.empty()) {
    if (auto s = WriteAveraged(dir, averaged_steps); !s.ok()) return Fail(s);
    std::cout << "wrote " << (fs::path(dir) / "averaged").string() << " (the mean of the weights of steps "
              << absl::StrJoin(averaged_steps, ", ") << ")\n";
  }
  return 0;
}
