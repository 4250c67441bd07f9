// ModelRunner over model::MagmaModel (libtorch).
#ifndef MAGMA_ENGINE_MAGMA_RUNNER_H_
#define MAGMA_ENGINE_MAGMA_RUNNER_H_

#include <memory>

#include "magma/engine/model_runner.h"

namespace magma::model {
class MagmaModel;
}

namespace magma::engine {

struct MagmaRunnerOptions {
  // Sequences with KV cache at once. Default 8.
  int slots = 8;
  // Positions per sequence (prompt + output); 0 = the model's
  // max_position_embeddings. Default 4096.
  int context_tokens = 4096;
};

// `model` must outlive the runner. Allocates the KV cache up front
// (slots x context x layers x kv_heads x head_dim x 2 in the runtime dtype).
std::unique_ptr<ModelRunner> MakeMagmaRunner(const model::MagmaModel* model, const MagmaRunnerOptions& options);

}  // namespace magma::engine

#endif  // MAGMA_ENGINE_MAGMA_RUNNER_H_
