// Turning one sequence's logits into the next token: a chain of logits
// processors over a candidates array (llama.cpp's sampler chain, CTranslate2's
// LogitsProcessor), then a draw from the request's own random stream.
//
// Threads: a Sampler belongs to one sequence and is used by the decode loop.
#ifndef MAGMA_ENGINE_SAMPLING_H_
#define MAGMA_ENGINE_SAMPLING_H_

#include <cstdint>
#include <memory>
#include <random>
#include <vector>

#include "absl/status/status.h"

namespace magma::engine {

// Temperatures below this sample greedily (as vLLM does): the distribution is
// all but greedy there, and dividing logits by a tiny enough one (below about
// 1e-37) overflows float and leaves nothing to sample from.
inline constexpr float kGreedyBelowTemperature = 1e-5f;

struct SamplingParams {
  // 0 (or anything below kGreedyBelowTemperature) means greedy (argmax).
  // Default 1.
  float temperature = 1.0f;
  // Keep the k most likely tokens; 0 = all. Default 0.
  int32_t top_k = 0;
  // Keep the smallest set whose probability reaches p; 1 = all. Default 1.
  float top_p = 1.0f;
  // Drop tokens whose probability is below min_p * p(max); 0 = off. Default 0.
  float min_p = 0.0f;
  // Divide positive (multiply negative) logits of tokens already in the
  // prompt or output by this; 1 = off. Default 1.
  float repetition_penalty = 1.0f;
  // Random stream of this request: the same seed gives the same tokens
  // whatever else is in the batch. Default 0.
  uint64_t seed = 0;
  // Alternatives reported per generated token (0..20). Default 0.
  int32_t top_logprobs = 0;
};

// INVALID_ARGUMENT naming the field for out-of-range values.
absl::Status ValidateSamplingParams(const SamplingParams& params);

struct Candidate {
  int32_t id;
  float logit;
};

// The working set of one step: candidates (possibly a subset of the
// vocabulary after masking and truncation) and whether they are sorted by
// descending logit.
struct Candidates {
  std::vector<Candidate> items;
  bool sorted = false;
  void SortDescending();
};

class LogitsProcessor {
 public:
  virtual ~LogitsProcessor() = default;
  // Modifies or filters `c`. `history` holds the prompt and generated ids.
  virtual void Apply(const std::vector<int32_t>& history, Candidates* c) const = 0;
};

// Built-in processors (each a no-op at its neutral value).
std::unique_ptr<LogitsProcessor> MakeRepetitionPenalty(float penalty);
std::unique_ptr<LogitsProcessor> MakeTemperature(float temperature);
std::unique_ptr<LogitsProcessor> MakeTopK(int32_t k);
std::unique_ptr<LogitsProcessor> MakeTopP(float p);
std::unique_ptr<LogitsProcessor> MakeMinP(float p);
// Keeps only `allowed` ids (sorted or not).
std::unique_ptr<LogitsProcessor> MakeAllowedTokens(std::vector<int32_t> allowed);

// Softmax of the candidates' logits, in their order.
std::vector<float> Softmax(const Candidates& c);

struct TokenLogprob {
  int32_t id;
  float logprob;
};

struct SampledToken {
  int32_t id = -1;
  // log p of the chosen token under the model's distribution (the raw
  // logits, before any processor), as vLLM reports it.
  float logprob = 0;
  // The most likely alternatives under the same distribution.
  std::vector<TokenLogprob> top;
};

class Sampler {
 public:
  explicit Sampler(const SamplingParams& params);

  // Picks the next token from `logits` [vocab]. `allowed` (may be null)
  // restricts the choice (constrained decoding) before the chain runs.
  // REQUIRES: at least one token is allowed.
  SampledToken Sample(const float* logits, int32_t vocab, const std::vector<int32_t>& history,
                      const std::vector<int32_t>* allowed);

 private:
  SamplingParams params_;
  std::vector<std::unique_ptr<LogitsProcessor>> chain_;
  std::mt19937_64 rng_;
};

}  // namespace magma::engine

#endif  // MAGMA_ENGINE_SAMPLING_H_
