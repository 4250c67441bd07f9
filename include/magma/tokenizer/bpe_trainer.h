// Training a small byte-level BPE tokenizer in the Llama-3 tokenizer.json
// layout, for the random and trained models the project makes itself.
#ifndef MAGMA_TOKENIZER_BPE_TRAINER_H_
#define MAGMA_TOKENIZER_BPE_TRAINER_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"

namespace magma::tokenizer {

struct AddedTokenSpec {
  std::string content;  // e.g. "<|eot_id|>"
  int32_t id = 0;       // must not collide with the learned vocabulary
  bool special = true;
};

struct BpeTrainOptions {
  // Merges to learn (fewer if the corpus runs out of repeated pairs).
  int num_merges = 1000;
  // Entries appended after the learned ones that no text ever encodes to
  // (robot action tokens are counted down from the top of the base
  // vocabulary, as in the OpenVLA/Magma scheme). Default 0.
  int reserved_pieces = 0;
  // Tokens added after the learned vocabulary, with fixed ids.
  std::vector<AddedTokenSpec> added_tokens;
  // bos_token / eos_token of tokenizer_config.json (must be added tokens).
  std::string bos_token = "<|begin_of_text|>";
  std::string eos_token = "<|end_of_text|>";
};

// Learns merges on `corpus` (pre-tokenized with the Llama-3 split) and writes
// dir/tokenizer.json and dir/tokenizer_config.json. Deterministic: ties
// between equally frequent pairs go to the smaller (left id, right id).
absl::Status TrainByteLevelBpe(const std::vector<std::string>& corpus, const BpeTrainOptions& options,
                               const std::string& dir);

// Added tokens for a Llama-3-style chat vocabulary placed at the top of a
// `vocab_size` id space, with <image> at `image_token_id`.
std::vector<AddedTokenSpec> Llama3StyleAddedTokens(int32_t vocab_size, int32_t image_token_id);

}  // namespace magma::tokenizer

#endif  // MAGMA_TOKENIZER_BPE_TRAINER_H_
