// The files of a checkpoint directory as a whole: what a new checkpoint
// written there would replace or mix with.
#ifndef MAGMA_MODEL_CHECKPOINT_FILES_H_
#define MAGMA_MODEL_CHECKPOINT_FILES_H_

#include <string>
#include <vector>

#include "absl/status/status.h"

namespace magma::model {

// The regular files in `dir` that belong to a Hugging Face checkpoint or a
// magma-train run, a new one written there would mix with:
// config.json, preprocessor_config.json, the tokenizer's files,
// model.safetensors, its index and its shards
// (model-NNNNN-of-NNNNN.safetensors), dataset_statistics.json,
// trainer_state.json and optimizer.pt. Full paths; empty when `dir` does
// not exist.
std::vector<std::string> CheckpointFilesIn(const std::string& dir);

// Removes `files` (as CheckpointFilesIn lists them); INTERNAL naming the
// first that cannot be removed. Files already gone are fine.
absl::Status RemoveFiles(const std::vector<std::string>& files);

}  // namespace magma::model

#endif  // MAGMA_MODEL_CHECKPOINT_FILES_H_
