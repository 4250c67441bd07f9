#include "magma/model/checkpoint_files.h"

#include <filesystem>
#include <regex>
#include <set>

#include "absl/strings/str_cat.h"

namespace magma::model {

std::vector<std::string> CheckpointFilesIn(const std::string& dir) {
  static const std::set<std::string> kNames = {"config.json",
                                               "preprocessor_config.json",
                                               "generation_config.json",
                                               "tokenizer.json",
                                               "tokenizer.model",
                                               "tokenizer_config.json",
                                               "special_tokens_map.json",
                                               "model.safetensors",
                                               "model.safetensors.index.json",
                                               "dataset_statistics.json",
                                               "trainer_state.json",
                                               "optimizer.pt"};
  static const std::regex kShard("model-[0-9]+-of-[0-9]+\\.safetensors");
  std::vector<std::string> out;
  std::error_code ec;
  for (const auto& e : std::filesystem::directory_iterator(dir, ec)) {
    const std::string name = e.path().filename().string();
    if (e.is_regular_file(ec) && (kNames.count(name) > 0 || std::regex_match(name, kShard))) {
      out.push_back(e.path().string());
    }
  }
  return out;
}

absl::Status RemoveFiles(const std::vector<std::string>& files) {
  for (const std::string& f : files) {
    std::error_code ec;
    if (!std::filesystem::remove(f, ec) && ec) {
      return absl::InternalError(absl::StrCat("cannot remove ", f, ": ", ec.message()));
    }
  }
  return absl::OkStatus();
}

}  // namespace magma::model
