// The Magma model in libtorch: ConvNeXt vision tower -> mlp2x_gelu projector
// with row separators -> Llama decoder with a slot-based KV cache.
//
// Threads: a MagmaModel and its KvCache belong to one thread (the engine's
// decode loop). Const methods that do not touch a cache (EncodeImage,
// EmbedPrompt) are safe to call concurrently.
#ifndef MAGMA_MODEL_MODEL_H_
#define MAGMA_MODEL_MODEL_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include <ATen/core/Tensor.h>

#include "absl/status/statusor.h"
#include "magma/model/model_config.h"

namespace magma::model {

class Checkpoint;

struct LoadOptions {
  // Runtime dtype of weights and activations: "float32" or "bfloat16".
  std::string dtype = "bfloat16";
  // Dtype of the vision tower's and projector's weight matrices; empty means
  // the same as `dtype`. float32 here with a bfloat16 decoder keeps image
  // features exact at 4-8x the tower's compute time.
  std::string vision_dtype;
  // Log progress (tensors and bytes) while loading. Default true.
  bool log_progress = true;
  // Read every mapped weight page during Load so that the first request does
  // not pay for paging the checkpoint in. Default false (tools load lazily);
  // the server turns it on.
  bool prefault = false;
  // Where the decoder's weight matrices (attention, MLP, lm_head) live:
  //   "mapped":   used in place from the checkpoint mapping when it holds the
  //               runtime dtype (no copy; the kernel's page cache);
  //   "resident": copied once into anonymous memory advised for transparent
  //               huge pages. Decoding streams every matrix once per token;
  //               measured on `1b`, batch-8 decode ran 12 % faster and
  //               batch-1 decode came 8 points closer to the memory read rate;
  //   "auto":     resident when the matrices take at most half of the memory
  //               available at load time, else mapped. Default.
  std::string weights = "auto";
};

// Key/value cache for up to `slots` sequences of up to `capacity` positions
// each, one pair of [slots, kv_heads, capacity, head_dim] tensors per layer.
// A slot is taken on admission and released when the sequence ends.
class KvCache {
 public:
  KvCache(const TextConfig& text, int slots, int capacity, at::ScalarType dtype);
  KvCache(const KvCache&) = delete;
  KvCache& operator=(const KvCache&) = delete;

  // A free slot with length 0, or -1 when all are taken.
  int Allocate();
  // Returns `slot` to the pool. REQUIRES: slot was allocated.
  void Release(int slot);
  // Number of cached positions of `slot`.
  int length(int slot) const { return lengths_[slot]; }
  int capacity() const { return capacity_; }
  int num_slots() const { return static_cast<int>(lengths_.size()); }
  int num_free() const;
  // Bytes held by the cache tensors.
  int64_t bytes() const;

  // A copy of the first `positions` cached positions of `slot` (keys and
  // values of every layer), to start other sequences with the same prefix.
  struct Snapshot {
    std::vector<at::Tensor> k, v;  // per layer [kv_heads, positions, head_dim]
    int64_t positions = 0;
    int64_t bytes() const;
  };
  // REQUIRES: positions <= length(slot).
  Snapshot Save(int slot, int64_t positions) const;
  // Replaces the contents of `slot` with `snapshot`; length(slot) becomes
  // snapshot.positions. REQUIRES: snapshot.positions <= capacity().
  void Restore(int slot, const Snapshot& snapshot);

 private:
  friend class MagmaModel;
  int capacity_;
  std::vector<at::Tensor> k_, v_;  // per layer [slots, kv_heads, capacity, head_dim]
  std::vector<int> lengths_;
  std::vector<bool> used_;
};

class MagmaModel {
 public:
  // Loads dir/config.json, preprocessor_config.json and the safetensors
  // weights (memory-mapped; converted only when the stored dtype differs from
  // the runtime one). Every parameter must be present with the expected shape:
  // the error lists what is missing or mismatched.
  static absl::StatusOr<std::unique_ptr<MagmaModel>> Load(const std::string& dir,
                                                          const LoadOptions& options);
  ~MagmaModel();
  MagmaModel(const MagmaModel&) = delete;
  MagmaModel& operator=(const MagmaModel&) = delete;

  const ModelConfig& config() const { return config_; }
  std::string name() const { return name_; }
  std::string architecture() const { return config_.architecture; }
  at::ScalarType dtype() const { return dtype_; }
  int64_t vocab_size() const { return vocab_size_; }
  int64_t hidden_size() const { return config_.text.hidden_size; }
  int64_t max_context_tokens() const { return config_.text.max_position_embeddings; }
  int64_t num_parameters() const { return num_parameters_; }
  int32_t crop_size() const { return static_cast<int32_t>(config_.preprocess.base_img_size); }
  int32_t max_crops() const { return static_cast<int32_t>(config_.preprocess.num_crops); }
  int64_t image_token_id() const { return config_.image_token_index; }
  // Names of the ConvNeXt stage depths and widths found in the checkpoint.
  const std::vector<int64_t>& vision_depths() const { return vision_depths_; }
  const std::vector<int64_t>& vision_dims() const { return vision_dims_; }

  // Number of embedding positions one image with this grid occupies.
  int64_t ImageTokenCount(int grid_rows, int grid_cols) const;

  // Tower output ("clip_vis_dense") for crops [N, 3, S, S] float32:
  // [N, C, S/32, S/32] float32. (Activations are float32 in every mode;
  // the runtime dtype applies to weight matrices.)
  absl::StatusOr<at::Tensor> VisionFeatures(const at::Tensor& crops) const;

  // One image's embeddings, [ImageTokenCount(rows, cols), hidden]: tower,
  // projector, stitching of the crop grid and a row separator after every
  // feature row, per the config's any-res strategy ("crop" or "global").
  // `crops` is [rows*cols, 3, S, S] float32, row-major over the grid.
  absl::StatusOr<at::Tensor> EncodeImage(const at::Tensor& crops, int grid_rows, int grid_cols) const;

  // EncodeImage for several images (crops[i] on grid grids[i] = {rows,
  // cols}) with one tower pass over all their crops. With `tower_features`
  // ("crop" strategy only) also returns that pass's output, [all crops, C,
  // S/32, S/32], for training losses on the tower itself.
  absl::StatusOr<std::vector<at::Tensor>> EncodeImages(const std::vector<at::Tensor>& crops,
                                                       const std::vector<std::pair<int, int>>& grids,
                                                       at::Tensor* tower_features = nullptr) const;
  // Token embeddings with each image token replaced by the next entry of
  // `images` (outputs of EncodeImage, in order): [L_expanded, hidden].
  // INVALID_ARGUMENT when the number of image tokens differs from images.size()
  // or an id is outside the vocabulary.
  absl::StatusOr<at::Tensor> EmbedPrompt(const std::vector<int64_t>& ids,
                                         const std::vector<at::Tensor>& images) const;

  // Runs `embeds` [L, hidden] through the decoder after the positions already
  // cached in `slot`, appending their keys and values. Returns float32 logits:
  // [L, vocab] when all_logits, else [vocab] for the last position.
  // OUT_OF_RANGE when the slot would exceed the cache capacity.
  absl::StatusOr<at::Tensor> Prefill(const at::Tensor& embeds, KvCache* cache, int slot,
                                     bool all_logits = false) const;

  // One decode step for a batch: token tokens[b] is appended to slots[b] (each
  // at its own position) in ONE batched forward. Returns float32 logits
  // [B, vocab]. Slots must be distinct.
  absl::StatusOr<at::Tensor> Decode(const std::vector<int64_t>& tokens, const std::vector<int>& slots,
                                    KvCache* cache) const;

  // Full forward without a persistent cache: logits [L, vocab] for embeds [L, hidden].
  absl::StatusOr<at::Tensor> Forward(const at::Tensor& embeds) const;

  // Forward of a batch of sequences that all start at position 0, without a
  // cache: logits [B, T, vocab] for embeds [B, T, hidden]. Attention is
  // causal, so right-padding a shorter sequence leaves its logits unchanged.
  absl::StatusOr<at::Tensor> ForwardBatch(const at::Tensor& embeds) const;
  // The same forward, with logits at some positions only: spans[b] = {first,
  // count} of sequence b; returns their logits stacked, [sum of counts,
  // vocab]. Training needs logits where targets are predicted, and the LM
  // head over every position is a small model's largest matrix product.
  absl::StatusOr<at::Tensor> ForwardBatchSpans(const at::Tensor& embeds,
                                               const std::vector<std::pair<int64_t, int64_t>>& spans) const;
  // Final hidden states (after the last RMSNorm) for embeds: [L, hidden] float32.
  absl::StatusOr<at::Tensor> LastHiddenState(const at::Tensor& embeds) const;

  // Training. Replaces every weight by a float32 copy that requires grad and
  // returns them (for an optimizer); from then on EncodeImage, EmbedPrompt
  // and Prefill record autograd graphs (use a fresh KvCache per forward).
  // FAILED_PRECONDITION unless loaded in float32 (dtype and vision_dtype).
  absl::StatusOr<std::vector<at::Tensor>> MakeTrainable();
  // Training: keep the attention probabilities ([B, heads, T, T]) and the
  // per-head outputs before o_proj ([B, heads, T, head_dim]) of `layers`
  // from each ForwardBatch, as part of the autograd graph, for losses that
  // teach chosen query heads where to look. Layers count from 0; negative
  // counts from the end (-1: the last layer). Empty (the default) = off.
  void SetCaptureLayers(std::vector<int> layers) {
    capture_layers_ = std::move(layers);
    captured_attention_.clear();
    captured_head_outputs_.clear();
  }
  // The captured tensors of `layer` (as SetCaptureLayers counts it) from
  // the last ForwardBatch; undefined when that layer is not captured.
  const at::Tensor& captured_attention(int layer) const;
  const at::Tensor& captured_head_outputs(int layer) const;
  // Training: also keep the final hidden states (after the last RMSNorm,
  // [B, T, hidden]) of each ForwardBatch in the autograd graph, for
  // read-outs trained on what the answer positions should know. Off by
  // default.
  void SetCaptureFinalHidden(bool on) {
    capture_final_hidden_ = on;
    captured_final_hidden_ = at::Tensor();
  }
  // The final hidden states of the last ForwardBatch; undefined when off.
  const at::Tensor& captured_final_hidden() const { return captured_final_hidden_; }
  // While training, run the linear layers' products in bfloat16 (float32
  // accumulation; weights, optimizer state and everything else stay
  // float32): the decoder's (its linears and attention products) with
  // `decoder`, the vision tower's and the projector's with `vision`.
  // Several times faster on CPUs with AVX512-BF16.
  void SetBf16TrainingMatmuls(bool decoder, bool vision) {
    bf16_training_matmuls_ = decoder;
    bf16_vision_training_matmuls_ = vision;
  }
  // Writes the current weights as one float32 safetensors file with the
  // checkpoint's names and shapes.
  absl::Status SaveWeights(const std::string& path);

 private:
  struct Weights;
  MagmaModel();
  absl::Status Init(const std::string& dir, const LoadOptions& options);
  // Shared decoder body. x: [B, T, hidden]; positions [B, T] (int64).
  at::Tensor RunDecoder(at::Tensor x, const at::Tensor& positions, KvCache* cache,
                        const std::vector<int>& slots, bool prefill) const;
  // One decode step of the decoder layers with bfloat16 weights, as fused
  // passes over raw buffers. x: [B, hidden] float32; pos[b]: position of
  // sequence b's token. Returns the final-normed hidden state [B, hidden].
  at::Tensor DecodeLayersBf16(at::Tensor x, const std::vector<int64_t>& pos, KvCache* cache,
                              const std::vector<int>& slots) const;
  at::Tensor Tower(const at::Tensor& x) const;
  // ForwardBatch's checks of embeds (`caller` names the method in errors).
  absl::Status CheckBatch(const at::Tensor& embeds, const char* caller) const;
  // The decoder over a batch from position 0, no cache: final hidden states
  // [B, T, hidden]; keeps them when capture_final_hidden_.
  at::Tensor BatchHidden(const at::Tensor& embeds) const;
  // A linear layer of the decoder; bfloat16 products while training with
  // bf16_training_matmuls_.
  at::Tensor Dense(const at::Tensor& x, const at::Tensor& w, const at::Tensor& b = {}) const;
  // The same for the vision tower and the projector, with
  // bf16_vision_training_matmuls_.
  at::Tensor VisionDense(const at::Tensor& x, const at::Tensor& w, const at::Tensor& b) const;
  // Whether the vision blocks' linears with weights `w` run as 1x1
  // convolutions (float32 weights and products).
  bool PointwiseAsConvolutions(const at::Tensor& w) const;
  // at::matmul, in bfloat16 under the same condition.
  at::Tensor Product(const at::Tensor& a, const at::Tensor& b) const;
  at::Tensor Project(const at::Tensor& features_nhwc) const;
  at::Tensor LmHead(const at::Tensor& hidden) const;
  // Calls fn(name, tensor) for every parameter, in checkpoint naming.
  void ForEachParameter(const std::function<void(const std::string&, at::Tensor&)>& fn);

  std::string name_;
  ModelConfig config_;
  at::ScalarType dtype_;
  at::ScalarType vision_dtype_;
  int64_t vocab_size_ = 0;
  int64_t num_parameters_ = 0;
  std::vector<int64_t> vision_depths_, vision_dims_;
  int64_t vision_patch_ = 4;  // the stem's kernel and stride
  std::unique_ptr<Checkpoint> checkpoint_;  // backs zero-copy weights
  std::unique_ptr<Weights> w_;
  bool training_ = false;
  bool bf16_training_matmuls_ = false;
  bool bf16_vision_training_matmuls_ = false;
  std::vector<int> capture_layers_;
  // Per decoder layer (undefined where not captured).
  mutable std::vector<at::Tensor> captured_attention_, captured_head_outputs_;
  bool capture_final_hidden_ = false;
  mutable at::Tensor captured_final_hidden_;
};

// Index from 0 of decoder layer `layer` of `layers`, counted from 0 or,
// negative, from the end (-1: the last); -1 when there is no such layer.
int64_t LayerIndex(int layer, int64_t layers);

// Parses "float32" / "bfloat16".
absl::StatusOr<at::ScalarType> ParseDType(const std::string& name);

}  // namespace magma::model

#endif  // MAGMA_MODEL_MODEL_H_
