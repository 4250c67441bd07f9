// Tokenizers of Magma-style checkpoints, identical to the checkpoint's own:
// Hugging Face tokenizer.json byte-level BPE (Llama-3, Magma-8B) and
// SentencePiece .model files (Llama-2/Vicuna style, HAMSTER, small models).
// No libtorch here.
//
// Threads: a loaded Tokenizer is immutable; every const method may be called
// from any number of threads at once.
#ifndef MAGMA_TOKENIZER_TOKENIZER_H_
#define MAGMA_TOKENIZER_TOKENIZER_H_

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace magma::tokenizer {

// Ids of the tokens the server treats specially; -1 where the vocabulary has none.
struct SpecialIds {
  int32_t bos = -1;    // <|begin_of_text|> / <s>
  int32_t eos = -1;    // <|end_of_text|> / </s>
  int32_t eot = -1;    // <|eot_id|>: end of a chat turn (eos when absent)
  int32_t pad = -1;
  int32_t image = -1;  // <image>
};

// A run of text and whether special-token strings in it are recognised.
// Prompt templates are trusted (parse_special = true); client text is not.
struct Segment {
  std::string text;
  bool parse_special = false;
};

class Tokenizer {
 public:
  virtual ~Tokenizer() = default;

  // Ids for `segments` as if their texts were one string in which only the
  // parse_special segments may contain special tokens. Post-processing (e.g.
  // a BOS the checkpoint's tokenizer adds by itself) is applied when
  // add_special_tokens. INVALID_ARGUMENT for text that is not valid UTF-8.
  virtual absl::StatusOr<std::vector<int32_t>> EncodeSegments(const std::vector<Segment>& segments,
                                                              bool add_special_tokens) const = 0;

  // One text; special-token strings are plain text unless parse_special.
  // Nothing is added around it.
  absl::StatusOr<std::vector<int32_t>> Encode(absl::string_view text, bool parse_special = false) const;

  // Text of `ids`; invalid UTF-8 (a cut multi-byte character) becomes U+FFFD.
  // With clean_up_tokenization_spaces(), CleanUpTokenizationSpaces applies.
  std::string Decode(const std::vector<int32_t>& ids, bool skip_special = true) const;

  // tokenizer_config.json's clean_up_tokenization_spaces (Llama-3: true;
  // absent: false, as for Hugging Face's Llama tokenizers): decoded text
  // loses the space before "." "," "!" "?" and some English contractions.
  bool clean_up_tokenization_spaces() const { return clean_up_tokenization_spaces_; }

  // Raw bytes token `id` contributes to a decoded text; `first` says the token
  // starts the text (SentencePiece drops the leading space there). Empty for
  // out-of-range ids.
  virtual std::string TokenBytes(int32_t id, bool first) const = 0;

  // Text of one token inside a text, as listed with log-probabilities:
  // TokenBytes(id, false) (SentencePiece's "▁Mark" keeps its space: " Mark"),
  // with a cut multi-byte character as U+FFFD.
  std::string TokenText(int32_t id) const;

  // The vocabulary entry of `id` as stored (e.g. "Ġthe", "▁the", "<|eot_id|>").
  virtual std::string IdToPiece(int32_t id) const = 0;
  // -1 when `piece` is not in the vocabulary.
  virtual int32_t PieceToId(absl::string_view piece) const = 0;
  // True for special/control tokens (skipped by Decode(skip_special = true)).
  virtual bool IsSpecial(int32_t id) const = 0;

  virtual int32_t vocab_size() const = 0;
  // Size of the base vocabulary, without added tokens (Llama-3: 128000).
  // Robot action tokens are counted down from here.
  virtual int32_t base_vocab_size() const = 0;
  virtual const SpecialIds& special_ids() const = 0;
  // "bpe" or "sentencepiece".
  virtual const char* kind() const = 0;
  // The most bytes of input text one token can stand for, or 0 when there is
  // no such bound (a normaliser that drops or merges text, a run of unknown
  // characters read as one <unk>). A text of more than n times this many
  // bytes needs more than n tokens.
  virtual size_t MaxBytesPerToken() const { return 0; }

 protected:
  bool clean_up_tokenization_spaces_ = false;
};

struct LoadOptions {
  // Path of the SentencePiece facade library (libmagma_spm_facade.so). Empty:
  // the path recorded at build time, then the directory of the executable.
  std::string sentencepiece_facade;
};

// Loads the tokenizer of a model directory: tokenizer.json (with
// tokenizer_config.json when present) if there is one, else tokenizer.model.
// NOT_FOUND when the directory has neither; INVALID_ARGUMENT naming the file
// and the problem for malformed files; UNIMPLEMENTED for tokenizer.json
// features this implementation does not cover (named in the message).
absl::StatusOr<std::unique_ptr<Tokenizer>> LoadTokenizer(const std::string& dir, const LoadOptions& options = {});

// Hugging Face's clean_up_tokenization: " ." " ?" " !" " ," " ' " " n't"
// " 'm" " 's" " 've" " 're" lose their space, each replaced throughout the
// text in that order (so "a ' ." stays "a '.").
std::string CleanUpTokenizationSpaces(std::string text);

// Turns ids into text one token at a time for streaming: every returned
// piece is valid UTF-8, a multi-byte character split across tokens is held
// back until complete, and the concatenation of all pieces plus Finish()
// equals Tokenizer::Decode of the same ids. With the space clean-up, text
// from a space that could still start a clean-up pattern (" n" before what
// might be "'t", a trailing space before what might be ".") waits for what
// follows; text after it rules the pattern out or completes it.
class IncrementalDecoder {
 public:
  // `tokenizer` must outlive the decoder. `clean_up_spaces` defaults to the
  // tokenizer's clean_up_tokenization_spaces().
  IncrementalDecoder(const Tokenizer* tokenizer, bool skip_special = true,
                     std::optional<bool> clean_up_spaces = std::nullopt);

  // Text that became complete with `id` (possibly empty).
  std::string Push(int32_t id);
  // Whatever is still held back, invalid remainders as U+FFFD.
  std::string Finish();
  // The cleaned text held back for the clean-up: what Finish() would add
  // now, but for an incomplete character.
  std::string Held() const;

 private:
  const Tokenizer* tokenizer_;
  bool skip_special_;
  bool clean_up_;
  bool first_ = true;
  std::string pending_;
  std::string unclean_;  // complete text the clean-up may still change
};

// Length of the longest prefix of `bytes` that ends on a character boundary
// and contains no invalid sequence that is not also cut off at the end;
// `replace` receives the valid text with invalid sequences as U+FFFD.
// Returns the number of bytes consumed; incomplete trailing sequences stay.
size_t TakeCompleteUtf8(absl::string_view bytes, std::string* out);

// True when `text` is valid UTF-8.
bool IsValidUtf8(absl::string_view text);

}  // namespace magma::tokenizer

#endif  // MAGMA_TOKENIZER_TOKENIZER_H_
