// magma-cli: developer and researcher commands over the model library.
//
//   magma-cli preprocess --model_dir D --image I.png --out pixels.npy [--grid_out grid.npy]
//   magma-cli forward    --model_dir D --image I.png --input_ids ids.npy --out logits.npy [--dtype float32]
//   magma-cli generate   --model_dir D --image I.png --input_ids ids.npy --max_new_tokens N
//   magma-cli init       --preset tiny|small|1b|8b --seed S --out D
//   magma-cli inspect    --model_dir D
//   magma-cli tokenize   --model_dir D --input texts.jsonl [--parse_special]
//   magma-cli draw-path  --image I.png --answer "<ans>[...]</ans>" --out O.png
//   magma-cli draw-som   --image I.png --boxes boxes.json --out O.png
//   magma-cli propose    --image I.png
#include <filesystem>
#include <fstream>
#include <iostream>
#include <sstream>

#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include <ATen/ATen.h>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "magma/model/checkpoint_files.h"
#include "magma/model/model.h"
#include "magma/model/random_init.h"
#include "magma/model/runtime.h"
#include "magma/model/safetensors.h"
#include "magma/tokenizer/tokenizer.h"
#include "magma/util/file.h"
#include "magma/util/logging.h"
#include "magma/util/npy.h"
#include "magma/vision/image.h"

ABSL_FLAG(std::string, model_dir, "", "Checkpoint directory");
ABSL_FLAG(std::vector<std::string>, image, {}, "Image file(s), comma-separated, one per <image> token");
ABSL_FLAG(std::string, input_ids, "", ".npy int64 [L] or [1, L] prompt ids with one image token per image");
ABSL_FLAG(std::string, out, "", "Output path");
ABSL_FLAG(std::string, grid_out, "", "preprocess: also write the crop grid [[rows, cols]] (int64)");
ABSL_FLAG(std::string, dtype, "float32", "Runtime dtype: float32 or bfloat16");
ABSL_FLAG(std::string, vision_dtype, "", "Vision tower dtype (default: --dtype)");
ABSL_FLAG(int, max_new_tokens, 16, "generate: tokens to produce (greedy)");
ABSL_FLAG(std::string, preset, "tiny", "init: tiny, small, 1b or 8b");
ABSL_FLAG(uint64_t, seed, 0, "init: random seed");
ABSL_FLAG(bool, overwrite, false, "init: replace the checkpoint files already in --out");
ABSL_FLAG(int, threads, 0, "libtorch threads (0 = one per core)");
ABSL_FLAG(std::string, log_level, "warn", "Log level");
ABSL_FLAG(std::string, input, "", "tokenize: JSON Lines file, one JSON string per line");
ABSL_FLAG(bool, parse_special, false, "tokenize: recognise special-token strings in the text");

namespace magma::cli {
// draw-path, draw-som and propose (cli_agent.cc). Sets *handled for those.
int RunAgentCommand(const std::string& command, bool* handled);
}  // namespace magma::cli

namespace {

using magma::model::MagmaModel;

int Fail(const absl::Status& s) {
  std::cerr << "error: " << s.ToString() << "\n";
  return 1;
}

absl::Status Require(const char* name, const std::string& value) {
  if (value.empty()) return absl::InvalidArgumentError(absl::StrCat("--", name, " is required"));
  return absl::OkStatus();
}



absl::StatusOr<std::vector<int64_t>> ReadIds(const std::string& path) {
  auto a = magma::npy::Read(path);
  if (!a.ok()) return a.status();
  if (a->dtype != magma::npy::DType::kInt64 || a->shape.empty() || a->shape.size() > 2 ||
      (a->shape.size() == 2 && a->shape[0] != 1)) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": input ids must be int64 [L] or [1, L]"));
  }
  return a->i64;
}

// Loads the model and builds the prompt embeddings from --image and --input_ids.
absl::StatusOr<at::Tensor> PromptEmbeddings(const MagmaModel& model) {
  auto ids = ReadIds(absl::GetFlag(FLAGS_input_ids));
  if (!ids.ok()) return ids.status();
  std::vector<at::Tensor> images;
  for (const std::string& path : absl::GetFlag(FLAGS_image)) {
    auto rgb = magma::vision::ReadRgb(path);
    if (!rgb.ok()) return rgb.status();
    magma::vision::Crops crops = magma::vision::PreprocessAnyres(*rgb, magma::model::AnyresOptionsOf(model.config().preprocess));
    at::Tensor pixels = at::from_blob(crops.pixels.data(), {crops.num_crops(), 3, crops.base, crops.base}, at::kFloat);
    auto features = model.EncodeImage(pixels, crops.grid.rows, crops.grid.cols);
    if (!features.ok()) return features.status();
    images.push_back(*features);
  }
  return model.EmbedPrompt(*ids, images);
}

absl::StatusOr<std::unique_ptr<MagmaModel>> LoadModel() {
  if (auto s = Require("model_dir", absl::GetFlag(FLAGS_model_dir)); !s.ok()) return s;
  magma::model::LoadOptions options;
  options.dtype = absl::GetFlag(FLAGS_dtype);
  options.vision_dtype = absl::GetFlag(FLAGS_vision_dtype);
  return MagmaModel::Load(absl::GetFlag(FLAGS_model_dir), options);
}

int CmdPreprocess() {
  if (auto s = Require("model_dir", absl::GetFlag(FLAGS_model_dir)); !s.ok()) return Fail(s);
  if (auto s = Require("out", absl::GetFlag(FLAGS_out)); !s.ok()) return Fail(s);
  if (absl::GetFlag(FLAGS_image).size() != 1) return Fail(absl::InvalidArgumentError("--image takes one file"));
  auto config = magma::model::LoadModelConfig(absl::GetFlag(FLAGS_model_dir));
  if (!config.ok()) return Fail(config.status());
  auto rgb = magma::vision::ReadRgb(absl::GetFlag(FLAGS_image)[0]);
  if (!rgb.ok()) return Fail(rgb.status());
  magma::vision::Crops crops = magma::vision::PreprocessAnyres(*rgb, magma::model::AnyresOptionsOf(config->preprocess));
  auto s = magma::npy::Write(absl::GetFlag(FLAGS_out),
                             magma::npy::FromFloat({crops.num_crops(), 3, crops.base, crops.base}, crops.pixels));
  if (!s.ok()) return Fail(s);
  if (!absl::GetFlag(FLAGS_grid_out).empty()) {
    s = magma::npy::Write(absl::GetFlag(FLAGS_grid_out), magma::npy::FromInt64({1, 2}, {crops.grid.rows, crops.grid.cols}));
    if (!s.ok()) return Fail(s);
  }
  return 0;
}

int CmdForward() {
  if (auto s = Require("out", absl::GetFlag(FLAGS_out)); !s.ok()) return Fail(s);
  auto model = LoadModel();
  if (!model.ok()) return Fail(model.status());
  auto embeds = PromptEmbeddings(**model);
  if (!embeds.ok()) return Fail(embeds.status());
  auto logits = (*model)->Forward(*embeds);
  if (!logits.ok()) return Fail(logits.status());
  at::Tensor l = logits->contiguous();
  std::vector<float> values(l.data_ptr<float>(), l.data_ptr<float>() + l.numel());
  auto s = magma::npy::Write(absl::GetFlag(FLAGS_out), magma::npy::FromFloat({l.size(0), l.size(1)}, values));
  return s.ok() ? 0 : Fail(s);
}

int CmdGenerate() {
  auto model = LoadModel();
  if (!model.ok()) return Fail(model.status());
  auto embeds = PromptEmbeddings(**model);
  if (!embeds.ok()) return Fail(embeds.status());
  const int n = absl::GetFlag(FLAGS_max_new_tokens);
  const int64_t room = (*model)->max_context_tokens() - embeds->size(0);
  if (n < 1 || n > room) {
    return Fail(absl::InvalidArgumentError(absl::StrCat("--max_new_tokens must be in 1..", std::max<int64_t>(room, 0),
                                                        " (the context left after the ", embeds->size(0),
                                                        "-position prompt); got ", n)));
  }
  magma::model::KvCache cache((*model)->config().text, 1, static_cast<int>(embeds->size(0)) + n, (*model)->dtype());
  const int slot = cache.Allocate();
  auto logits = (*model)->Prefill(*embeds, &cache, slot);
  if (!logits.ok()) return Fail(logits.status());
  std::vector<int64_t> out;
  for (int i = 0; i < n; ++i) {
    const int64_t next = logits->argmax().item<int64_t>();
    out.push_back(next);
    if (i + 1 == n) break;
    auto step = (*model)->Decode({next}, {slot}, &cache);
    if (!step.ok()) return Fail(step.status());
    logits = (*step)[0];
  }
  std::cout << "[" << absl::StrJoin(out, ", ") << "]\n";
  return 0;
}

int CmdInit() {
  if (auto s = Require("out", absl::GetFlag(FLAGS_out)); !s.ok()) return Fail(s);
  auto preset = magma::model::GetPreset(absl::GetFlag(FLAGS_preset));
  if (!preset.ok()) return Fail(preset.status());
  const std::string out = absl::GetFlag(FLAGS_out);
  const std::vector<std::string> old = magma::model::CheckpointFilesIn(out);
  if (!old.empty() && !absl::GetFlag(FLAGS_overwrite)) {
    return Fail(absl::FailedPreconditionError(absl::StrCat(out, " already holds checkpoint files (",
                                                           std::filesystem::path(old.front()).filename().string(),
                                                           "): pass --overwrite to replace them")));
  }
  if (auto s = magma::model::RemoveFiles(old); !s.ok()) return Fail(s);
  auto s = magma::model::WriteRandomModel(*preset, absl::GetFlag(FLAGS_seed), absl::GetFlag(FLAGS_out));
  if (!s.ok()) return Fail(s);
  std::cout << "wrote " << preset->name << " model to " << absl::GetFlag(FLAGS_out) << "\n";
  return 0;
}

int CmdInspect() {
  if (auto s = Require("model_dir", absl::GetFlag(FLAGS_model_dir)); !s.ok()) return Fail(s);
  auto ckpt = magma::model::Checkpoint::Open(absl::GetFlag(FLAGS_model_dir));
  if (!ckpt.ok()) return Fail(ckpt.status());
  int64_t params = 0;
  for (const auto& [name, view] : (*ckpt)->tensors()) {
    std::cout << name << "\t" << magma::model::StDTypeName(view->dtype) << "\t[" << absl::StrJoin(view->shape, ", ")
              << "]\t" << view->NumElements() << "\n";
    params += view->NumElements();
  }
  std::cout << "tensors: " << (*ckpt)->tensors().size() << "\nparameters: " << params
            << "\nbytes: " << (*ckpt)->total_bytes() << "\nfiles: " << (*ckpt)->files().size() << "\n";
  return 0;
}

int CmdTokenize() {
  if (auto s = Require("model_dir", absl::GetFlag(FLAGS_model_dir)); !s.ok()) return Fail(s);
  if (auto s = Require("input", absl::GetFlag(FLAGS_input)); !s.ok()) return Fail(s);
  auto tok = magma::tokenizer::LoadTokenizer(absl::GetFlag(FLAGS_model_dir));
  if (!tok.ok()) return Fail(tok.status());
  auto text = magma::util::ReadFile(absl::GetFlag(FLAGS_input), "input");
  if (!text.ok()) return Fail(text.status());
  std::istringstream in(*text);
  std::string line;
  int line_no = 0;
  while (std::getline(in, line)) {
    ++line_no;
    if (line.empty()) continue;
    auto j = nlohmann::json::parse(line, nullptr, /*allow_exceptions=*/false);
    if (j.is_discarded() || !j.is_string()) {
      return Fail(absl::InvalidArgumentError(absl::StrCat(absl::GetFlag(FLAGS_input), ":", line_no,
                                                          ": not a JSON string")));
    }
    auto ids = (*tok)->Encode(j.get<std::string>(), absl::GetFlag(FLAGS_parse_special));
    if (!ids.ok()) return Fail(ids.status());
    std::cout << "[" << absl::StrJoin(*ids, ",") << "]\n";
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage(
      "magma-cli <command> [flags]\n"
      "commands: preprocess, forward, generate, init, inspect, tokenize, draw-path, draw-som, propose\n"
      "(see --helpfull)");
  std::vector<char*> args = absl::ParseCommandLine(argc, argv);
  if (auto s = magma::log::SetLevel(absl::GetFlag(FLAGS_log_level)); !s.ok()) {
    std::cerr << "--log_level: " << s.message() << "\n";
    return 2;
  }
  magma::model::ConfigureRuntime(absl::GetFlag(FLAGS_threads));
  if (args.size() != 2) {
    std::cerr << absl::ProgramUsageMessage() << "\n";
    return 2;
  }
  const std::string cmd = args[1];
  if (cmd == "preprocess") return CmdPreprocess();
  if (cmd == "forward") return CmdForward();
  if (cmd == "generate") return CmdGenerate();
  if (cmd == "init") return CmdInit();
  if (cmd == "inspect") return CmdInspect();
  if (cmd == "tokenize") return CmdTokenize();
  bool handled = false;
  const int rc = magma::cli::RunAgentCommand(cmd, &handled);
  if (handled) return rc;
  std::cerr << "unknown command '" << cmd << "'\n" << absl::ProgramUsageMessage() << "\n";
  return 2;
}
