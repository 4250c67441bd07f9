// Training a MagmaModel with libtorch autograd: next-token cross-entropy on
// target tokens after a prompt (with images), AdamW, linear warm-up then
// cosine decay, gradient-norm clipping.
//
// Threads: one thread at a time.
#ifndef MAGMA_MODEL_TRAINER_H_
#define MAGMA_MODEL_TRAINER_H_

#include <cstdint>
#include <memory>
#include <vector>

#include <ATen/core/Tensor.h>

#include "absl/status/statusor.h"
#include "magma/model/model.h"

namespace magma::model {

struct TrainOptions {
  double learning_rate = 1e-3;  // peak, after warm-up
  double weight_decay = 0.01;   // AdamW
  int64_t warmup_steps = 50;
  int64_t total_steps = 1000;   // cosine decay to 10% of the peak by here
  double clip_norm = 1.0;       // gradient norm limit; 0 = off
};

struct TrainImage {
  at::Tensor crops;  // [rows*cols, 3, S, S] float32
  int rows = 1, cols = 1;
};

struct TrainExample {
  std::vector<int64_t> prompt_ids;   // with one image token per image
  std::vector<TrainImage> images;
  std::vector<int64_t> target_ids;   // what the model should answer (not empty)
};

class Trainer {
 public:
  // Makes `model` trainable (see MagmaModel::MakeTrainable). `model` must
  // outlive the trainer.
  static absl::StatusOr<std::unique_ptr<Trainer>> Create(MagmaModel* model, const TrainOptions& options);
  ~Trainer();

  // One optimizer step over `batch`; returns the mean loss per target token.
  absl::StatusOr<double> Step(const std::vector<TrainExample>& batch);

  // Mean loss per target token without updating (no autograd graph).
  absl::StatusOr<double> Loss(const std::vector<TrainExample>& batch);

  int64_t step() const { return step_; }
  double learning_rate() const;

 private:
  Trainer(MagmaModel* model, const TrainOptions& options, std::vector<at::Tensor> params);
  absl::StatusOr<at::Tensor> ExampleLoss(const TrainExample& e, int64_t* tokens);
  struct Optimizer;
  MagmaModel* model_;
  TrainOptions options_;
  std::vector<at::Tensor> params_;
  std::unique_ptr<Optimizer> opt_;
  int64_t step_ = 0;
};

}  // namespace magma::model

#endif  // MAGMA_MODEL_TRAINER_H_
