// A random tiny Magma model (with its tokenizer) in a temporary directory,
// loaded into a serving backend.
#ifndef MAGMA_TESTING_TINY_MODEL_H_
#define MAGMA_TESTING_TINY_MODEL_H_

#include <memory>
#include <string>

#include "magma/app/backend.h"
#include "magma/config/config.h"
#include "testing/temp_dir.h"

namespace magma::testing {

class TinyModel {
 public:
  // Writes the "tiny" preset (seed 7) and, when `statistics_json` is not
  // empty, a dataset_statistics.json.
  explicit TinyModel(const std::string& statistics_json = "");
  const std::string& dir() const { return dir_; }
  config::ServerConfig Config() const;
  // A new backend (engine) over the loaded model.
  std::shared_ptr<api::Backend> backend();

 private:
  friend TinyModel& ProcessTinyModel(const std::string& statistics_json);

  TempDir temp_;
  std::string dir_;
  std::vector<app::LoadedBackend> loaded_;
};

// A TinyModel that lives until the process exits, for suites that share one
// model across tests: it is never destroyed (engine threads may still run
// while statics are torn down), and its directory is removed at exit.
TinyModel& ProcessTinyModel(const std::string& statistics_json = "");

}  // namespace magma::testing

#endif  // MAGMA_TESTING_TINY_MODEL_H_
