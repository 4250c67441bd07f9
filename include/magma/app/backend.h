// Wiring of the serving process: from a validated config to a loaded model,
// tokenizer, engine and task context (an api::Backend), and to the server's
// options. Used by magma-serve and by the end-to-end tests.
#ifndef MAGMA_APP_BACKEND_H_
#define MAGMA_APP_BACKEND_H_

#include <memory>

#include "absl/status/statusor.h"
#include "magma/api/server.h"
#include "magma/config/config.pb.h"

namespace magma::model {
class MagmaModel;
}

namespace magma::app {

// The model and the backend built on it; the model outlives the engine.
struct LoadedBackend {
  std::shared_ptr<model::MagmaModel> model;
  std::shared_ptr<api::Backend> backend;
};

// Loads config.model.dir (weights, tokenizer, dataset_statistics.json when
// present) and starts the engine. Errors name the file or field at fault.
// The loading runs on a short-lived thread of its own (see backend.cc);
// callers should not run libtorch work on long-lived threads of their own.
absl::StatusOr<LoadedBackend> LoadBackend(const config::ServerConfig& config);

// Server options from the config (listen, gRPC, limits, security).
api::ServerOptions ServerOptionsFrom(const config::ServerConfig& config);

}  // namespace magma::app

#endif  // MAGMA_APP_BACKEND_H_
