// Constrained decoding: token-level automata over the tokenizer's vocabulary
// that guarantee parseable outputs (the UI answer "Mark: N" over existing
// marks, the 7-action-token grammar, trace and 2D-path grammars, a client's
// choice list).
//
// A Grammar is compiled once (on an RPC thread) and shared; each sequence
// runs its own Constraint over it on the decode loop.
#ifndef MAGMA_ENGINE_CONSTRAINT_H_
#define MAGMA_ENGINE_CONSTRAINT_H_

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace magma::engine {

// The bytes each token id stands for, computed once per tokenizer. Special
// tokens have no bytes (they can only appear as end tokens).
class TokenTable {
 public:
  // `bytes[id]` is the decoded text of id ("" for special tokens); `end_ids`
  // are the tokens that may end a constrained answer (eos, end of turn).
  // `first_bytes[id]`, when given, is the text id stands for as the answer's
  // first token: a SentencePiece tokenizer with a dummy prefix starts every
  // text with a space piece ("▁Mark") and drops that space when it decodes,
  // so a model trained on its encodings writes " Mark" for "Mark", or a
  // lone " " (first bytes "") before an answer that starts with "[": such a
  // first token stands for nothing and leaves the grammar at its start.
  TokenTable(std::vector<std::string> bytes, std::vector<int32_t> end_ids, std::vector<std::string> first_bytes = {});
  int32_t size() const { return static_cast<int32_t>(bytes_.size()); }
  const std::string& bytes(int32_t id) const { return bytes_[id]; }
  const std::string& first_bytes(int32_t id) const { return first_bytes_.empty() ? bytes_[id] : first_bytes_[id]; }
  const std::vector<int32_t>& end_ids() const { return end_ids_; }

 private:
  std::vector<std::string> bytes_;
  std::vector<std::string> first_bytes_;
  std::vector<int32_t> end_ids_;
};

// One sequence's position in a grammar.
class Constraint {
 public:
  virtual ~Constraint() = default;
  // Ids that may come next. Empty means the grammar cannot continue with
  // this vocabulary (the engine then fails the request).
  virtual const std::vector<int32_t>& Allowed() = 0;
  // Advances over `id`. REQUIRES: id was allowed.
  virtual void Accept(int32_t id) = 0;
  // True once an end token was accepted (generation must stop).
  virtual bool Finished() const = 0;
  // True when what was accepted is a whole answer, one that an end token
  // may follow (or Finished()).
  virtual bool Complete() const = 0;
};

// A compiled grammar; thread-safe.
class Grammar {
 public:
  virtual ~Grammar() = default;
  virtual std::unique_ptr<Constraint> Start() const = 0;
  // The fewest tokens of a complete answer, its end token included, when
  // that is at most `limit`; otherwise limit + 1 (the search stops there).
  virtual int32_t MinTokens(int32_t limit) const = 0;
  // Bytes of the compiled tables (for caches that bound their memory).
  virtual size_t TableBytes() const = 0;
};

// Compiles a regular expression over bytes into a token-level automaton.
// Syntax: literal bytes; escapes \\ \[ \] \( \) \{ \} \. \* \+ \? \| \" \n \t
// \d (digit); classes [a-z0-9_] and [^...]; groups ( ); alternation |;
// quantifiers ? * + {m} {m,} {m,n}. The whole output must match; then one
// of table->end_ids() ends it. INVALID_ARGUMENT (with the position) for a
// malformed pattern, RESOURCE_EXHAUSTED when the automaton would exceed
// kMaxGrammarStates states.
inline constexpr size_t kMaxGrammarStates = 20000;
absl::StatusOr<std::shared_ptr<const Grammar>> CompileRegex(const std::string& pattern,
                                                            std::shared_ptr<const TokenTable> table);

// Exactly one of `choices` (verbatim), then an end token. INVALID_ARGUMENT
// for an empty list or choice; RESOURCE_EXHAUSTED when the choices hold more
// than kMaxChoiceBytes in all (checked before anything is built) or need more
// states than CompileRegex allows.
inline constexpr size_t kMaxChoiceBytes = 65536;
absl::StatusOr<std::shared_ptr<const Grammar>> CompileChoices(const std::vector<std::string>& choices,
                                                              std::shared_ptr<const TokenTable> table);

// Exactly `count` tokens, each from `ids`, then an end token (the robot
// action grammar: 7 of the 256 action ids, then EOS).
std::shared_ptr<const Grammar> TokenSequenceGrammar(std::vector<int32_t> ids, int count,
                                                    std::vector<int32_t> end_ids);

// `text` with every regex metacharacter escaped.
std::string RegexEscape(const std::string& text);

}  // namespace magma::engine

#endif  // MAGMA_ENGINE_CONSTRAINT_H_
