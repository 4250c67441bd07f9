// Training a SentencePiece tokenizer with the `spm_train` program (the
// trainer of libsentencepiece, run as a separate process: the library itself
// bundles its own protobuf and must not be linked into our binaries), in the
// layout of the Llama-2 tokenizer.model: BPE pieces, byte fallback, digits
// split, text kept as written. Reserved pieces can be appended at the top of
// the vocabulary for robot action tokens (the OpenVLA/Magma scheme counts
// them down from the last id); no text ever encodes to them.
#ifndef MAGMA_TOKENIZER_SPM_TRAINER_H_
#define MAGMA_TOKENIZER_SPM_TRAINER_H_

#include <string>
#include <vector>

#include "absl/status/status.h"

namespace magma::tokenizer {

struct SpmTrainOptions {
  // spm_train --vocab_size: learned pieces plus <unk>, BOS, EOS, the control
  // symbols and the 256 byte pieces. A soft limit: a small corpus may yield
  // fewer pieces.
  int vocab_size = 1000;
  // Pieces of type UNUSED named "<action_N>" appended after the trained
  // ones (N = 0 for the first). Default 0.
  int reserved_pieces = 0;
  // Control symbols: never produced from text; our tokenizer recognises
  // them in trusted prompt text (chat headers, <image>).
  std::vector<std::string> control_symbols = {"<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>", "<image>"};
  std::string bos_piece = "<|begin_of_text|>";
  std::string eos_piece = "<|end_of_text|>";
  // The trainer program, looked up in PATH unless it holds a '/'.
  std::string program = "spm_train";
};

// Trains on `corpus` (one sentence per entry; newlines inside an entry are
// replaced by spaces) and writes dir/tokenizer.model and
// dir/tokenizer_config.json (add_bos_token false: the chat templates write
// the BOS themselves). Deterministic for a given corpus. FAILED_PRECONDITION
// when the program cannot be run, INTERNAL with its output when it fails.
absl::Status TrainSentencePiece(const std::vector<std::string>& corpus, const SpmTrainOptions& options,
                                const std::string& dir);

// Appends `count` UNUSED pieces named "<action_N>" (score 0) to a serialized
// SentencePiece ModelProto: the repeated `pieces` field is extended by
// appending its entries to the message, which protobuf merges in order.
std::string AppendReservedPieces(std::string model_proto, int count);

}  // namespace magma::tokenizer

#endif  // MAGMA_TOKENIZER_SPM_TRAINER_H_
