#include "magma/model/trainer.h"

#include <cmath>

#include <torch/types.h>
#include <torch/nn/utils/clip_grad.h>
#include <torch/optim/adamw.h>

#include "absl/strings/str_cat.h"

namespace magma::model {

struct Trainer::Optimizer {
  explicit Optimizer(std::vector<at::Tensor> params, const TrainOptions& o)
      : adamw(std::move(params), torch::optim::AdamWOptions(o.learning_rate).weight_decay(o.weight_decay)) {}
  torch::optim::AdamW adamw;
};

absl::StatusOr<std::unique_ptr<Trainer>> Trainer::Create(MagmaModel* model, const TrainOptions& options) {
  if (options.total_steps < 1 || options.warmup_steps < 0 || !(options.learning_rate > 0)) {
    return absl::InvalidArgumentError("training options: total_steps >= 1, warmup_steps >= 0, learning_rate > 0");
  }
  auto params = model->MakeTrainable();
  if (!params.ok()) return params.status();
  return std::unique_ptr<Trainer>(new Trainer(model, options, *std::move(params)));
}

Trainer::Trainer(MagmaModel* model, const TrainOptions& options, std::vector<at::Tensor> params)
    : model_(model), options_(options), params_(params), opt_(std::make_unique<Optimizer>(params, options)) {}

Trainer::~Trainer() = default;

double Trainer::learning_rate() const {
  const double peak = options_.learning_rate;
  if (step_ < options_.warmup_steps) return peak * (step_ + 1) / (options_.warmup_steps + 1);
  const double span = std::max<int64_t>(1, options_.total_steps - options_.warmup_steps);
  const double t = std::min(1.0, (step_ - options_.warmup_steps) / span);
  return peak * (0.1 + 0.9 * 0.5 * (1 + std::cos(M_PI * t)));
}

absl::StatusOr<at::Tensor> Trainer::ExampleLoss(const TrainExample& e, int64_t* tokens) {
  if (e.target_ids.empty()) return absl::InvalidArgumentError("a training example has no target tokens");
  std::vector<at::Tensor> images;
  for (const auto& img : e.images) {
    auto f = model_->EncodeImage(img.crops, img.rows, img.cols);
    if (!f.ok()) return f.status();
    images.push_back(*f);
  }
  // The prompt and all but the last target token go in; each target token is
  // predicted by the position before it.
  std::vector<int64_t> ids = e.prompt_ids;
  ids.insert(ids.end(), e.target_ids.begin(), e.target_ids.end() - 1);
  auto embeds = model_->EmbedPrompt(ids, images);
  if (!embeds.ok()) return embeds.status();
  const int64_t length = embeds->size(0), t = static_cast<int64_t>(e.target_ids.size());
  KvCache cache(model_->config().text, 1, static_cast<int>(length), at::kFloat);
  auto logits = model_->Prefill(*embeds, &cache, cache.Allocate(), /*all_logits=*/true);
  if (!logits.ok()) return logits.status();
  at::Tensor predicted = logits->narrow(0, length - t, t);
  at::Tensor target = at::tensor(e.target_ids, at::kLong);
  *tokens += t;
  return at::cross_entropy_loss(predicted, target, {}, at::Reduction::Sum);
}

absl::StatusOr<double> Trainer::Step(const std::vector<TrainExample>& batch) {
  if (batch.empty()) return absl::InvalidArgumentError("empty batch");
  try {
    for (auto& group : opt_->adamw.param_groups()) {
      static_cast<torch::optim::AdamWOptions&>(group.options()).lr(learning_rate());
    }
    opt_->adamw.zero_grad();
    int64_t tokens = 0;
    double total = 0;
    for (const auto& e : batch) {
      int64_t n = 0;
      auto loss = ExampleLoss(e, &n);
      if (!loss.ok()) return loss.status();
      tokens += n;
      total += loss->item<double>();
      loss->backward();
    }
    // Gradients of a mean over the batch's target tokens.
    for (auto& p : params_) {
      if (p.grad().defined()) p.mutable_grad().div_(static_cast<double>(tokens));
    }
    if (options_.clip_norm > 0) torch::nn::utils::clip_grad_norm_(params_, options_.clip_norm);
    opt_->adamw.step();
    ++step_;
    return total / static_cast<double>(tokens);
  } catch (const std::exception& e) {
    return absl::InternalError(absl::StrCat("training step: ", e.what()));
  }
}

absl::StatusOr<double> Trainer::Loss(const std::vector<TrainExample>& batch) {
  try {
    at::NoGradGuard no_grad;
    int64_t tokens = 0;
    double total = 0;
    for (const auto& e : batch) {
      auto loss = ExampleLoss(e, &tokens);
      if (!loss.ok()) return loss.status();
      total += loss->item<double>();
    }
    return tokens == 0 ? 0.0 : total / static_cast<double>(tokens);
  } catch (const std::exception& e) {
    return absl::InternalError(absl::StrCat("loss: ", e.what()));
  }
}

}  // namespace magma::model
