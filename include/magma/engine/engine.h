// The decode loop: one thread owns the model runner, the KV cache and the
// batch, and serves every request from one continuous-batching loop (as vLLM
// and llama.cpp's server do): each iteration admits waiting requests (image
// encoding through an LRU vision cache, then prefill in chunks under a token
// budget) and decodes one token for every running sequence in one batched
// forward.
//
// Threads: Submit, Stats and Shutdown may be called from any thread. The
// callbacks run on the engine thread.
#ifndef MAGMA_ENGINE_ENGINE_H_
#define MAGMA_ENGINE_ENGINE_H_

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <memory>
#include <mutex>
#include <thread>

#include "absl/status/statusor.h"
#include "magma/engine/model_runner.h"
#include "magma/engine/request.h"
#include "magma/tokenizer/tokenizer.h"

namespace magma::engine {

struct EngineOptions {
  // Requests waiting for admission beyond the running batch; more get
  // RESOURCE_EXHAUSTED. Default 64.
  int max_queue = 64;
  // Sequences decoded together (also bounded by the runner's slots). Default 8.
  int max_batch = 8;
  // Prompt positions processed per iteration across prefills and image
  // encodes, so that a long prompt delays running streams by at most one
  // chunk (images that need more are encoded alone in an iteration).
  // Default 256.
  int prefill_chunk_tokens = 256;
  // Memory for cached image embeddings. Default 256 MiB.
  int64_t vision_cache_bytes = int64_t{256} << 20;
  // Memory for cached KV of prompt prefixes that end with an image (a UI
  // agent asking several questions about one screenshot skips the image and
  // its prefill); 0 disables. Default 512 MiB.
  int64_t prefix_cache_bytes = int64_t{512} << 20;
};

struct EngineStats {
  int64_t queued = 0;   // waiting for admission
  int64_t running = 0;  // holding a KV slot
  int64_t kv_bytes_used = 0, kv_bytes_total = 0;
  int64_t vision_cache_hits = 0, vision_cache_misses = 0, vision_cache_entries = 0;
  int64_t prompt_tokens = 0, output_tokens = 0;  // totals since start
  int64_t requests_finished = 0;
};

// Lets the submitter cancel its request; the engine drops it (and frees its
// KV slot) at the next iteration and reports kCancelled.
class RequestHandle {
 public:
  void Cancel() { cancelled_.store(true); }
  bool cancelled() const { return cancelled_.load(); }
  uint64_t id() const { return id_; }
  explicit RequestHandle(uint64_t id) : id_(id) {}

 private:
  std::atomic<bool> cancelled_{false};
  uint64_t id_;
};

class Engine {
 public:
  // `tokenizer` (may be null) turns tokens into text and stop strings into
  // matches; without it results carry ids only. Starts the engine thread.
  Engine(std::unique_ptr<ModelRunner> runner, std::shared_ptr<const tokenizer::Tokenizer> tokenizer,
         const EngineOptions& options);
  // Fails everything still pending with UNAVAILABLE and joins the thread.
  ~Engine();
  Engine(const Engine&) = delete;
  Engine& operator=(const Engine&) = delete;

  // Validates and enqueues. Errors (nothing is enqueued, no callback runs):
  // INVALID_ARGUMENT for an empty prompt, ids outside the vocabulary, image
  // tokens not matching the images, bad sampling values or max_new_tokens;
  // RESOURCE_EXHAUSTED when the queue is full or the prompt plus
  // max_new_tokens exceeds a sequence's context (with fit_context, only when
  // the prompt leaves no room at all, or less than max_new_tokens and than
  // the shortest answer its grammar allows: max_new_tokens is shortened to
  // the room left); UNAVAILABLE after Shutdown.
  absl::StatusOr<std::shared_ptr<RequestHandle>> Submit(GenerationRequest request, RequestCallbacks callbacks);

  EngineStats Stats() const;

  // Stops accepting; requests already submitted run to completion. Idempotent.
  void Shutdown();

  // Context length of one sequence (prompt + generated).
  int context_tokens() const { return capacity_; }
  int32_t vocab_size() const { return vocab_size_; }

 private:
  struct Sequence;
  class VisionCache;
  class PrefixCache;
  void Loop();
  bool Iterate();  // one scheduling iteration; false when idle
  void Finish(Sequence* seq, FinishReason reason, absl::Status status);
  // Cuts the result's text, followed by `held`, at the first stop string
  // that ends after byte `before` (the text's length before its last
  // piece); true if one did (the text is then the part before it).
  bool CutAtStopString(Sequence* seq, size_t before, const std::string& held);
  void AfterToken(Sequence* seq, int32_t token, const SampledToken& sampled);
  // Samples the next token of `seq` from its logits [vocab] under its
  // grammar or allowed set, then AfterToken.
  void SampleNext(Sequence* seq, const float* logits);
  // Positions of the images of `seq` that Admit would encode (none when
  // its prefix or its images are cached).
  int64_t EncodeCost(const Sequence& seq) const;
  // Takes a slot and starts `seq`, encoding its images; false when it must
  // wait (no free slot, or images that need more than `budget` when part of
  // the iteration's budget is spent).
  bool Admit(Sequence* seq, int64_t* budget);
  // Sets the waiting and running counts Submit reads, under mu_.
  void PublishCounts();

  std::unique_ptr<ModelRunner> runner_;
  std::shared_ptr<const tokenizer::Tokenizer> tokenizer_;
  const EngineOptions options_;
  const int capacity_;
  const int32_t vocab_size_;
  const int64_t kv_bytes_per_position_;  // of one sequence, all layers

  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::unique_ptr<Sequence>> incoming_;  // guarded by mu_
  bool stopping_ = false;                           // guarded by mu_ (no new requests)
  bool exit_ = false;                               // guarded by mu_ (thread must exit)
  uint64_t next_id_ = 1;                            // guarded by mu_

  // Engine-thread state.
  std::deque<std::unique_ptr<Sequence>> waiting_;
  std::vector<std::unique_ptr<Sequence>> running_;
  std::unique_ptr<VisionCache> vision_cache_;
  std::unique_ptr<PrefixCache> prefix_cache_;

  // Counters for Stats (written by the engine thread).
  std::atomic<int64_t> n_waiting_{0}, n_running_{0}, prompt_tokens_{0}, output_tokens_{0}, finished_{0};
  std::atomic<int64_t> kv_used_{0};
  std::atomic<int64_t> cache_hits_{0}, cache_misses_{0}, cache_entries_{0};

  std::thread thread_;
};

}  // namespace magma::engine

#endif  // MAGMA_ENGINE_ENGINE_H_
