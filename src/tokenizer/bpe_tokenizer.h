// Hugging Face tokenizer.json byte-level BPE (private to the component).
#ifndef MAGMA_SRC_TOKENIZER_BPE_TOKENIZER_H_
#define MAGMA_SRC_TOKENIZER_BPE_TOKENIZER_H_

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "magma/tokenizer/tokenizer.h"

namespace magma::tokenizer {

// Loads dir/tokenizer.json and, when present, dir/tokenizer_config.json.
absl::StatusOr<std::unique_ptr<Tokenizer>> LoadBpeTokenizer(const std::string& dir);

}  // namespace magma::tokenizer

#endif  // MAGMA_SRC_TOKENIZER_BPE_TOKENIZER_H_
