// What a client asks the engine for and what it gets back. Plain data: the
// engine knows nothing about tasks (text, click, act, trace); those are
// built from these pieces by the agent layer.
#ifndef MAGMA_ENGINE_REQUEST_H_
#define MAGMA_ENGINE_REQUEST_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/time/time.h"
#include "magma/engine/constraint.h"
#include "magma/engine/sampling.h"
#include "magma/vision/image.h"

namespace magma::engine {

// One image of the prompt, already preprocessed (on an RPC thread).
struct ImageInput {
  std::shared_ptr<const vision::Crops> crops;
  // Identifies the image content and preprocessing for the vision cache
  // (e.g. a hash of the pixels and the crop parameters); empty = not cached.
  std::string cache_key;
};

struct GenerationRequest {
  // Prompt ids with one image token per entry of `images`, in order.
  std::vector<int32_t> prompt_ids;
  std::vector<ImageInput> images;
  SamplingParams sampling;
  // Most tokens to generate (>= 1).
  int32_t max_new_tokens = 256;
  // max_new_tokens is the server's own default or bound, not a number the
  // client asked for: shorten it to what the context leaves after the prompt
  // instead of refusing the request (a client's own number that does not fit
  // is RESOURCE_EXHAUSTED, and so is a room shorter than the shortest answer
  // the grammar allows).
  bool fit_context = false;
  // Generation ends after one of these; the token is not part of the text.
  std::vector<int32_t> stop_token_ids;
  // The text ends before the first occurrence of any of these.
  std::vector<std::string> stop_strings;
  // Optional grammar the output must follow.
  std::shared_ptr<const Grammar> grammar;
  // Optional restriction of every step to these ids.
  std::vector<int32_t> allowed_token_ids;
  // Send text deltas while generating.
  bool stream = false;
  // The request fails with DEADLINE_EXCEEDED after this.
  absl::Time deadline = absl::InfiniteFuture();
  // Time the caller spent preparing the request (decode, overlays, tokenizing).
  absl::Duration preprocess_time;
};

enum class FinishReason {
  kStopToken,   // a stop token (EOS, end of turn) was generated
  kStopString,  // a stop string appeared in the text
  kLength,      // max_new_tokens reached
  kGrammar,     // the grammar's answer is complete
  kCancelled,
  kDeadline,
  kError,
};

const char* FinishReasonName(FinishReason reason);

struct Timings {
  absl::Duration preprocess;  // before submission (from the request)
  absl::Duration queue;       // submission -> admission
  absl::Duration vision;      // image encoding (zero on a cache hit)
  absl::Duration prefill;     // prompt processing, admission -> first token
  absl::Duration decode;      // first token -> finish
  int32_t prompt_tokens = 0;  // positions including image tokens
  int32_t output_tokens = 0;
  int32_t vision_cache_hits = 0;
  int32_t vision_cache_misses = 0;
};

struct GenerationResult {
  absl::Status status;  // OK unless cancelled, expired or failed
  FinishReason finish_reason = FinishReason::kLength;
  std::vector<int32_t> token_ids;  // generated, including a final stop token
  std::string text;                // decoded, stop token and stop string excluded
  std::vector<SampledToken> logprobs;  // one per generated token
  Timings timings;
};

// A piece of a streamed answer.
struct StreamDelta {
  std::vector<int32_t> token_ids;
  std::vector<SampledToken> logprobs;  // one per entry of token_ids
  std::string text;
};

// Called on the engine thread: must return quickly and never block.
struct RequestCallbacks {
  std::function<void(const StreamDelta&)> on_delta;  // only when stream is set
  std::function<void(GenerationResult)> on_done;     // exactly once
};

}  // namespace magma::engine

#endif  // MAGMA_ENGINE_REQUEST_H_
