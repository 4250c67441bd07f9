#include "testing/tiny_model.h"

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <stdexcept>
#include <vector>

#include "magma/model/random_init.h"

namespace magma::testing {
namespace {

std::vector<std::string>& DirsRemovedAtExit() {
  static auto* dirs = new std::vector<std::string>();
  return *dirs;
}

void RemoveDirsAtExit() {
  for (const std::string& dir : DirsRemovedAtExit()) {
    std::error_code ec;
    std::filesystem::remove_all(dir, ec);
  }
}

}  // namespace

TinyModel::TinyModel(const std::string& statistics_json) : dir_(temp_.File("model")) {
  auto preset = model::GetPreset("tiny");
  if (!preset.ok() || !model::WriteRandomModel(*preset, 7, dir_).ok()) {
    throw std::runtime_error("cannot write the tiny model");
  }
  if (!statistics_json.empty()) std::ofstream(dir_ + "/dataset_statistics.json") << statistics_json;
}

config::ServerConfig TinyModel::Config() const {
  config::ServerConfig c = config::DefaultConfig();
  c.mutable_model()->set_dir(dir_);
  c.mutable_model()->set_dtype("float32");
  c.mutable_model()->set_prefault(false);
  c.mutable_engine()->set_max_batch(4);
  c.mutable_engine()->set_context_tokens(1024);
  return c;
}

std::shared_ptr<api::Backend> TinyModel::backend() {
  auto loaded = app::LoadBackend(Config());
  if (!loaded.ok()) throw std::runtime_error(std::string(loaded.status().message()));
  loaded_.push_back(*loaded);
  return loaded->backend;
}

TinyModel& ProcessTinyModel(const std::string& statistics_json) {
  auto* model = new TinyModel(statistics_json);
  if (DirsRemovedAtExit().empty()) std::atexit(RemoveDirsAtExit);
  DirsRemovedAtExit().push_back(model->temp_.path());
  return *model;
}

}  // namespace magma::testing
