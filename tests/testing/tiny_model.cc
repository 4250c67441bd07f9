#include "testing/tiny_model.h"

#include <fstream>
#include <stdexcept>

#include "magma/model/random_init.h"

namespace magma::testing {

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

}  // namespace magma::testing
