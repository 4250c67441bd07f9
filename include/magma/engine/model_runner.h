// The engine's view of the model: slots of KV cache, image encoding, chunked
// prefill and batched decode. The libtorch implementation wraps
// model::MagmaModel (magma/engine/magma_runner.h); tests use a fake with
// scripted logits.
//
// Threads: used only by the engine thread.
#ifndef MAGMA_ENGINE_MODEL_RUNNER_H_
#define MAGMA_ENGINE_MODEL_RUNNER_H_

#include <cstdint>
#include <memory>
#include <vector>

#include "absl/status/statusor.h"
#include "magma/vision/image.h"

namespace magma::engine {

// Encoded image, opaque to the engine (kept in the vision cache).
class ImageFeatures {
 public:
  virtual ~ImageFeatures() = default;
  virtual int64_t num_tokens() const = 0;  // embedding positions it fills
  virtual int64_t bytes() const = 0;       // memory held
};

// Cached keys and values of a prompt prefix, opaque to the engine.
class PrefixState {
 public:
  virtual ~PrefixState() = default;
  virtual int64_t positions() const = 0;
  virtual int64_t bytes() const = 0;
};

class ModelRunner {
 public:
  virtual ~ModelRunner() = default;

  virtual int32_t vocab_size() const = 0;
  virtual int32_t image_token_id() const = 0;
  // Number of sequences that can hold KV cache at once, and positions each.
  virtual int num_slots() const = 0;
  virtual int slot_capacity() const = 0;
  // Bytes of KV cache in use / in total.
  virtual int64_t kv_bytes_used() const = 0;
  virtual int64_t kv_bytes_total() const = 0;

  // Positions one image with these crops occupies in the prompt.
  virtual int64_t ImageTokenCount(const vision::Crops& crops) const = 0;
  virtual absl::StatusOr<std::shared_ptr<const ImageFeatures>> EncodeImage(const vision::Crops& crops) = 0;

  // Takes a free slot (-1 when none).
  virtual int AllocateSlot() = 0;
  virtual void ReleaseSlot(int slot) = 0;

  // Prepares the prompt of `slot`: ids with one image token per image. With
  // `prefix`, the slot starts with that prefix already cached and `ids` are
  // the tokens after it. Returns the number of prompt positions still to
  // prefill.
  virtual absl::StatusOr<int64_t> BeginSequence(int slot, const std::vector<int32_t>& ids,
                                                const std::vector<std::shared_ptr<const ImageFeatures>>& images,
                                                const PrefixState* prefix) = 0;
  // Copies the first `positions` cached positions of `slot`.
  virtual absl::StatusOr<std::shared_ptr<const PrefixState>> SavePrefix(int slot, int64_t positions) = 0;
  // Runs up to `max_positions` more prompt positions. When the prompt is
  // complete, returns the logits for the next token [vocab]; before that an
  // empty vector.
  virtual absl::StatusOr<std::vector<float>> PrefillStep(int slot, int64_t max_positions) = 0;
  // One token for each slot in one batched forward; logits [B * vocab].
  virtual absl::StatusOr<std::vector<float>> DecodeStep(const std::vector<int>& slots,
                                                        const std::vector<int32_t>& tokens) = 0;
};

}  // namespace magma::engine

#endif  // MAGMA_ENGINE_MODEL_RUNNER_H_
