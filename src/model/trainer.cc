#include "magma/model/trainer.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include <ATen/CPUGeneratorImpl.h>
#include <torch/types.h>  // first: clip_grad.h uses it without including it

#include <torch/nn/utils/clip_grad.h>
#include <torch/optim/adamw.h>
#include <torch/serialize.h>

#include "absl/strings/str_cat.h"

namespace magma::model {
namespace {

// Weight of the empty cells' mean loss against the named cells' in each
// cell head.
constexpr double kEmptyCellWeight = 0.2;

// Sets the trainer's solo-phase head for one pass over a batch and clears
// it after, also when the pass throws.
class SoloPhase {
 public:
  SoloPhase(int* head, int now) : head_(head) { *head_ = now; }
  ~SoloPhase() { *head_ = -1; }
  SoloPhase(const SoloPhase&) = delete;
  SoloPhase& operator=(const SoloPhase&) = delete;

 private:
  int* head_;
};

}  // namespace

struct Trainer::Optimizer {
  explicit Optimizer(std::vector<at::Tensor> params, const TrainOptions& o)
      : adamw(std::move(params), torch::optim::AdamWOptions(o.learning_rate).weight_decay(o.weight_decay)) {}
  torch::optim::AdamW adamw;
};

namespace {

// A decoder layer a training loss supervises.
struct SupervisedLayer {
  const char* option;
  int layer;
};

// The layers the losses that are on supervise: cell pointers, word
// pointers, grounding.
std::vector<SupervisedLayer> SupervisedLayers(const TrainOptions& o) {
  std::vector<SupervisedLayer> out;
  if (o.attention_loss_weight > 0) out.push_back({"attention_layer", o.attention_layer});
  if (o.word_loss_weight > 0) out.push_back({"word_layer", o.word_layer});
  if (o.ground_loss_weight > 0) out.push_back({"ground_layer", o.ground_layer});
  return out;
}

}  // namespace

absl::Status CheckTrainOptions(const TrainOptions& options, int64_t layers) {
  if (options.total_steps < 1 || options.warmup_steps < 0 || !(options.learning_rate > 0)) {
    return absl::InvalidArgumentError("training options: total_steps >= 1, warmup_steps >= 0, learning_rate > 0");
  }
  if (!options.cell_head_weights.empty() && options.cell_head_weights.size() != options.cell_classes.size()) {
    return absl::InvalidArgumentError(absl::StrCat("training options: ", options.cell_head_weights.size(),
                                                   " cell head weights for ", options.cell_classes.size(),
                                                   " cell heads"));
  }
  if (options.ordered_ids < 0 || !(options.bin_smoothing >= 0)) {
    return absl::InvalidArgumentError(absl::StrCat("training options: ordered_ids (", options.ordered_ids,
                                                   ") and bin_smoothing (", options.bin_smoothing, ") must be >= 0"));
  }
  for (double w : options.cell_head_weights) {
    if (!(w >= 0)) return absl::InvalidArgumentError("training options: cell head weights must be >= 0");
  }
  for (const auto& phase : options.solo_cell_phases) {
    if (phase.steps < 0 || phase.head < 0 || phase.head >= static_cast<int>(options.cell_classes.size())) {
      return absl::InvalidArgumentError(absl::StrCat("training options: solo cell head ", phase.head, " for ",
                                                     phase.steps, " steps is not one of the ",
                                                     options.cell_classes.size(), " cell heads"));
    }
  }
  if (!(options.mark_loss_weight >= 0) ||
      (options.mark_loss_weight > 0 && (options.mark_classes < 1 || !(options.attention_loss_weight > 0)))) {
    return absl::InvalidArgumentError(
        "training options: mark_loss_weight must be >= 0; a mark read-out needs mark_classes >= 1 and the attention "
        "loss on (it reads the supervised heads)");
  }
  if (!(options.look_loss_weight >= 0) ||
      (options.look_loss_weight > 0 && (options.look_classes.empty() || !(options.attention_loss_weight > 0)))) {
    return absl::InvalidArgumentError(
        "training options: look_loss_weight must be >= 0; look read-outs need look_classes and the attention loss "
        "on (they read the supervised heads)");
  }
  for (int64_t c : options.look_classes) {
    if (c < 1) return absl::InvalidArgumentError("training options: every look read-out needs >= 1 class");
  }
  if (!(options.cell_offset_weight >= 0) || !(options.cell_where_weight >= 0) || !(options.clip_norm >= 0) ||
      !(options.offset_loss_weight >= 0)) {
    return absl::InvalidArgumentError(
        "training options: cell offset and where weights, offset_loss_weight and clip_norm must be >= 0");
  }
  if (!options.cell_offset_item_weights.empty() &&
      static_cast<int64_t>(options.cell_offset_item_weights.size()) != options.cell_offset_items) {
    return absl::InvalidArgumentError(absl::StrCat("training options: ", options.cell_offset_item_weights.size(),
                                                   " cell offset item weights for ", options.cell_offset_items,
                                                   " offset items"));
  }
  for (double w : options.cell_offset_item_weights) {
    if (!(w >= 0)) return absl::InvalidArgumentError("training options: cell offset item weights must be >= 0");
  }
  // A supervised layer, from 0 or negative from the end, must exist.
  for (const auto& [option, layer] : SupervisedLayers(options)) {
    if (LayerIndex(layer, layers) < 0) {
      return absl::InvalidArgumentError(absl::StrCat(option, " ", layer, " is not one of the ", layers,
                                                     " decoder layers (0..", layers - 1, ", or -1..-", layers,
                                                     " from the end)"));
    }
  }
  // The answer reads the grounded words in a later layer than the one in
  // which they look at their things.
  if (options.ground_loss_weight > 0 && options.word_loss_weight > 0 &&
      LayerIndex(options.ground_layer, layers) >= LayerIndex(options.word_layer, layers)) {
    return absl::InvalidArgumentError(absl::StrCat("ground_layer ", options.ground_layer,
                                                   " must come before word_layer ", options.word_layer, " (of ",
                                                   layers, " decoder layers)"));
  }
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<Trainer>> Trainer::Create(MagmaModel* model, const TrainOptions& options) {
  if (auto s = CheckTrainOptions(options, model->config().text.num_layers); !s.ok()) return s;
  auto params = model->MakeTrainable();
  if (!params.ok()) return params.status();
  std::vector<int> captured;
  for (const auto& supervised : SupervisedLayers(options)) captured.push_back(supervised.layer);
  model->SetCaptureLayers(std::move(captured));
  model->SetCaptureFinalHidden(options.offset_loss_weight > 0);
  return std::unique_ptr<Trainer>(new Trainer(model, options, *std::move(params)));
}

Trainer::Trainer(MagmaModel* model, const TrainOptions& options, std::vector<at::Tensor> params)
    : model_(model), options_(options), params_(params) {
  // The heads' initial weights: not from libtorch's default generator, which
  // is seeded anew in every process.
  at::Generator gen = at::detail::createCPUGenerator(options.seed);
  // Classes + offsets (2 per item) + the cell's own position in its crop (2).
  int64_t outputs = 2 * options.cell_offset_items + 2;
  for (int64_t n : options.cell_classes) outputs += n;
  if (!options.cell_classes.empty()) {
    const int64_t channels = model->vision_dims().back();
    cell_w_ = (at::randn({outputs, channels}, gen) / std::sqrt(static_cast<double>(channels))).set_requires_grad(true);
    cell_b_ = at::zeros({outputs}).set_requires_grad(true);
    params.push_back(cell_w_);
    params.push_back(cell_b_);
  }
  // A read-out of `outputs` numbers per query head: [heads, outputs,
  // head_dim] and [heads, outputs] (biases at `bias`).
  auto head_readout = [&](int64_t outputs, double bias, at::Tensor* w, at::Tensor* b) {
    const int64_t heads = model->config().text.num_heads, hd = model->config().text.head_dim;
    *w = (at::randn({heads, outputs, hd}, gen) / std::sqrt(static_cast<double>(hd))).set_requires_grad(true);
    *b = at::full({heads, outputs}, bias).set_requires_grad(true);
    params.push_back(*w);
    params.push_back(*b);
  };
  auto position_head = [&](at::Tensor* w, at::Tensor* b) { head_readout(2, 0.5, w, b); };  // x, y
  if (options.position_loss_weight > 0 && options.attention_loss_weight > 0) position_head(&position_w_, &position_b_);
  if (options.position_loss_weight > 0 && options.ground_loss_weight > 0) {
    position_head(&ground_position_w_, &ground_position_b_);
    if (options.word_loss_weight > 0) position_head(&word_position_w_, &word_position_b_);
  }
  // The options check makes sure the attention loss it reads through is on.
  auto class_readout = [&](std::string name, int look, double weight, int64_t classes) {
    ClassReadOut r{std::move(name), look, weight, classes, {}, {}};
    head_readout(classes, 0.0, &r.w, &r.b);
    class_readouts_.push_back(std::move(r));
  };
  if (options.mark_loss_weight > 0) class_readout("mark", -1, options.mark_loss_weight, options.mark_classes);
  if (options.look_loss_weight > 0) {
    for (size_t k = 0; k < options.look_classes.size(); ++k) {
      class_readout(absl::StrCat("look", k), static_cast<int>(k), options.look_loss_weight, options.look_classes[k]);
    }
  }
  if (options.offset_loss_weight > 0) {
    const int64_t hidden = model->hidden_size();
    offset_w_ = (at::randn({2, hidden}, gen) / std::sqrt(static_cast<double>(hidden))).set_requires_grad(true);
    offset_b_ = at::zeros({2}).set_requires_grad(true);
    params.push_back(offset_w_);
    params.push_back(offset_b_);
  }
  opt_ = std::make_unique<Optimizer>(params, options);
}

Trainer::~Trainer() = default;

int Trainer::SoloHead(int64_t step) const {
  for (const auto& phase : options_.solo_cell_phases) {
    if (step < phase.steps) return phase.head;
    step -= phase.steps;
  }
  return -1;
}

double Trainer::learning_rate() const {
  const double peak = options_.learning_rate;
  if (step_ < options_.warmup_steps) return peak * (step_ + 1) / (options_.warmup_steps + 1);
  const double span = std::max<int64_t>(1, options_.total_steps - options_.warmup_steps);
  const double t = std::min(1.0, (step_ - options_.warmup_steps) / span);
  return peak * (0.1 + 0.9 * 0.5 * (1 + std::cos(M_PI * t)));
}

at::Tensor Trainer::CellLoss(const at::Tensor& features, const std::vector<const TrainImage*>& images,
                             AuxiliaryReport* report) const {
  // features [N, C, h, w] -> per-cell outputs [N, h, w, outputs].
  at::Tensor out = at::linear(features.permute({0, 2, 3, 1}), cell_w_, cell_b_);
  const int64_t n = features.size(0), h = features.size(2), w = features.size(3);
  std::vector<at::Tensor> classes, offsets;
  const int64_t heads = static_cast<int64_t>(options_.cell_classes.size());
  const int64_t offset_dims = 2 * options_.cell_offset_items;
  for (const TrainImage* img : images) {
    const int64_t crops = img->crops.size(0);
    if (img->cell_classes.defined()) {
      classes.push_back(img->cell_classes);
      // Items an image gives no offsets for have none to learn.
      at::Tensor o = img->cell_offsets;
      if (o.size(3) < offset_dims) {
        o = at::cat({o, at::full({crops, h, w, offset_dims - o.size(3)}, std::numeric_limits<float>::quiet_NaN())},
                    3);
      }
      offsets.push_back(o.narrow(3, 0, offset_dims));
    } else {
      classes.push_back(at::full({crops, h, w, heads}, -1, at::kLong));
      offsets.push_back(at::full({crops, h, w, offset_dims}, std::numeric_limits<float>::quiet_NaN()));
    }
  }
  at::Tensor target = at::cat(classes).view({n, h, w, heads});
  at::Tensor target_offsets = at::cat(offsets).view({n, h, w, offset_dims});
  at::Tensor loss = at::zeros({}, at::kFloat);
  int64_t first = 0;
  for (int64_t k = 0; k < heads; ++k) {
    const int64_t m = options_.cell_classes[k];
    at::Tensor t = target.select(3, k).reshape({-1});
    if (report != nullptr) {
      at::Tensor some = t > 0;
      const double n = some.sum().item<double>();
      const at::Tensor right = out.narrow(3, first, m).reshape({-1, m}).argmax(1).eq(t).logical_and(some);
      report->cell_accuracy.push_back(n > 0 ? right.sum().item<double>() / n : 0.0);
    }
    // Cells with something to name and empty cells are averaged apart: a
    // few 13-pixel mark labels among hundreds of empty cells would otherwise
    // get almost none of the head's gradient.
    at::Tensor ce = at::cross_entropy_loss(out.narrow(3, first, m).reshape({-1, m}), t.clamp_min(0), {},
                                           at::Reduction::None);
    at::Tensor named = (t > 0).to(at::kFloat), empty = t.eq(0).to(at::kFloat);
    const double weight = solo_ >= 0                           ? (k == solo_ ? 1.0 : 0.0)
                          : options_.cell_head_weights.empty() ? 1.0
                                                               : options_.cell_head_weights[k];
    loss = loss + weight * ((ce * named).sum() / named.sum().clamp_min(1) +
                            kEmptyCellWeight * (ce * empty).sum() / empty.sum().clamp_min(1));
    first += m;
  }
  for (int64_t d = 0; d < offset_dims; d += 2) {
    const at::Tensor item = target_offsets.narrow(3, d, 2);
    at::Tensor has = item.select(3, 0).isnan().logical_not();
    if (has.any().item<bool>()) {
      at::Tensor error = out.narrow(3, first + d, 2).index({has}) - item.index({has});
      const double weight = options_.cell_offset_item_weights.empty() ? options_.cell_offset_weight
                                                                      : options_.cell_offset_item_weights[d / 2];
      if (solo_ < 0) loss = loss + weight * error.pow(2).mean();
      if (report != nullptr) report->offset_error.push_back(error.abs().mean().item<double>());
    } else if (report != nullptr) {
      report->offset_error.push_back(std::numeric_limits<double>::quiet_NaN());
    }
  }
  first += offset_dims;
  // Where each cell is in its crop (x, y in 0..1): a convolutional tower
  // only knows from its borders, and the language model reads positions from
  // what it attends to.
  at::Tensor xs = (at::arange(w, at::kFloat) + 0.5) / static_cast<double>(w);
  at::Tensor ys = (at::arange(h, at::kFloat) + 0.5) / static_cast<double>(h);
  at::Tensor where = at::stack({xs.view({1, w}).expand({h, w}), ys.view({h, 1}).expand({h, w})}, -1);  // [h, w, 2]
  const at::Tensor where_error = out.narrow(3, first, 2) - where.unsqueeze(0);
  if (report != nullptr) report->where_error = where_error.abs().mean().item<double>();
  if (solo_ < 0) loss = loss + options_.cell_where_weight * where_error.pow(2).mean();
  return loss;
}

namespace {

// Where each prompt token of `e` starts in the expanded sequence (an image
// token stands for its image's embeddings).
std::vector<int64_t> PromptStarts(const TrainExample& e, const MagmaModel& model) {
  std::vector<int64_t> starts;
  int64_t pos = 0;
  size_t m = 0;
  for (int64_t id : e.prompt_ids) {
    starts.push_back(pos);
    if (id == model.image_token_id() && m < e.images.size()) {
      pos += model.ImageTokenCount(e.images[m].rows, e.images[m].cols);
      ++m;
    } else {
      ++pos;
    }
  }
  return starts;
}

// Positions, in the expanded sequence of `e`, of the tower cells that
// `cells` marks in each image (an image's embeddings are feature rows, each
// followed by a separator: cell (crop r,q; i,j) of an R x C grid of f x f
// cells is at (r*f + i) * (C*f + 1) + q*f + j from the image's start).
std::vector<int64_t> PointerPositions(const TrainExample& e, const std::vector<at::Tensor>& cells,
                                      const MagmaModel& model) {
  const std::vector<int64_t> starts = PromptStarts(e, model);
  std::vector<int64_t> out;
  size_t m = 0;
  for (size_t k = 0; k < e.prompt_ids.size(); ++k) {
    if (e.prompt_ids[k] != model.image_token_id() || m >= e.images.size()) continue;
    const int64_t pos = starts[k];
    const TrainImage& img = e.images[m];
    const int64_t f = img.crops.size(2) / 32;
    const int64_t width = img.cols * f + 1;
    if (m < cells.size() && cells[m].defined()) {
      auto p = cells[m].accessor<bool, 3>();
      for (int r = 0; r < img.rows; ++r) {
        for (int q = 0; q < img.cols; ++q) {
          for (int64_t i = 0; i < f; ++i) {
            for (int64_t j = 0; j < f; ++j) {
              if (p[r * img.cols + q][i][j]) out.push_back(pos + (r * f + i) * width + q * f + j);
            }
          }
        }
      }
    }
    ++m;
  }
  return out;
}

// Positions, in the expanded sequence of `e`, of the prompt tokens `words`
// (indices into e.prompt_ids).
std::vector<int64_t> WordPositions(const TrainExample& e, const std::vector<int64_t>& words, const MagmaModel& model) {
  const std::vector<int64_t> starts = PromptStarts(e, model);
  std::vector<int64_t> out;
  for (int64_t w : words) {
    if (w >= 0 && w < static_cast<int64_t>(starts.size())) out.push_back(starts[w]);
  }
  return out;
}

// Per image of `e`, the cells of the things `ptr` does not point at: cells
// whose first cell head names something, outside the pointer's cells
// (undefined: no cell targets in that image).
std::vector<at::Tensor> OtherThings(const TrainExample& e, const TrainPointer& ptr) {
  std::vector<at::Tensor> others;
  for (size_t i = 0; i < e.images.size(); ++i) {
    const TrainImage& img = e.images[i];
    if (!img.cell_classes.defined()) {
      others.emplace_back();
      continue;
    }
    at::Tensor thing = img.cell_classes.select(3, 0) > 0;
    if (i < ptr.cells.size() && ptr.cells[i].defined()) thing = thing.logical_and(ptr.cells[i].logical_not());
    others.push_back(thing);
  }
  return others;
}

}  // namespace

absl::StatusOr<std::vector<at::Tensor>> Trainer::TargetLogits(const std::vector<TrainExample>& batch,
                                                             at::Tensor* aux_loss, AuxiliaryReport* report) {
  // Every image of the batch goes through the tower in one pass.
  std::vector<at::Tensor> crops;
  std::vector<std::pair<int, int>> grids;
  for (const auto& e : batch) {
    if (e.target_ids.empty()) return absl::InvalidArgumentError("a training example has no target tokens");
    for (int64_t i : e.ordered_targets) {
      if (i < 0 || i >= static_cast<int64_t>(e.target_ids.size())) {
        return absl::InvalidArgumentError(absl::StrCat("a training example lists target ", i, " as ordered; it has ",
                                                       e.target_ids.size(), " target tokens"));
      }
    }
    for (const auto& img : e.images) {
      crops.push_back(img.crops);
      grids.emplace_back(img.rows, img.cols);
    }
  }
  std::vector<at::Tensor> features;
  const bool cells = aux_loss != nullptr && cell_w_.defined() && !crops.empty();
  if (aux_loss != nullptr) *aux_loss = at::zeros({}, at::kFloat);
  if (!crops.empty()) {
    at::Tensor tower;
    auto f = model_->EncodeImages(crops, grids, cells ? &tower : nullptr);
    if (!f.ok()) return f.status();
    features = *std::move(f);
    if (cells) {
      std::vector<const TrainImage*> images;
      for (const auto& e : batch) {
        for (const auto& img : e.images) images.push_back(&img);
      }
      *aux_loss = options_.cell_loss_weight * CellLoss(tower, images, report);
    }
  }
  // The prompt and all but the last target token go in; each target token is
  // predicted by the position before it. Sequences are right-padded to one
  // length: attention is causal, so padding never reaches a real position.
  std::vector<at::Tensor> embeds;
  std::vector<int64_t> lengths;
  size_t next_image = 0;
  for (const auto& e : batch) {
    std::vector<int64_t> ids = e.prompt_ids;
    ids.insert(ids.end(), e.target_ids.begin(), e.target_ids.end() - 1);
    const std::vector<at::Tensor> images(features.begin() + static_cast<int64_t>(next_image),
                                         features.begin() + static_cast<int64_t>(next_image + e.images.size()));
    next_image += e.images.size();
    auto x = model_->EmbedPrompt(ids, images);
    if (!x.ok()) return x.status();
    lengths.push_back(x->size(0));
    embeds.push_back(*std::move(x));
  }
  // Sequences of similar length share a forward; a much longer one (the
  // HAMSTER prompt is three times a click prompt) gets its own instead of
  // padding the whole batch to its length.
  std::vector<size_t> order(batch.size());
  for (size_t i = 0; i < order.size(); ++i) order[i] = i;
  std::sort(order.begin(), order.end(), [&](size_t x, size_t y) { return lengths[x] < lengths[y]; });
  std::vector<at::Tensor> predicted(batch.size());
  for (size_t first = 0; first < order.size();) {
    size_t last = first + 1;
    while (last < order.size() && lengths[order[last]] * 4 <= lengths[order[first]] * 5) ++last;
    const int64_t longest = lengths[order[last - 1]];
    std::vector<at::Tensor> group;
    std::vector<std::pair<int64_t, int64_t>> spans;  // the positions that predict each example's targets
    for (size_t k = first; k < last; ++k) {
      const at::Tensor& x = embeds[order[k]];
      group.push_back(x.size(0) < longest ? at::constant_pad_nd(x, {0, 0, 0, longest - x.size(0)}) : x);
      const int64_t t = static_cast<int64_t>(batch[order[k]].target_ids.size());
      spans.emplace_back(lengths[order[k]] - t, t);
    }
    // [sum of target counts, vocab]: example k's rows follow those of the ones before it.
    auto logits = model_->ForwardBatchSpans(at::stack(group), spans);
    if (!logits.ok()) return logits.status();
    int64_t logit_row = 0;
    if (aux_loss != nullptr) {
      for (const auto& [option, layer] : SupervisedLayers(options_)) {
        if (!model_->captured_attention(layer).defined()) {
          return absl::FailedPreconditionError(absl::StrCat(
              "decoder layer ", layer, " (", option, ") was not captured: the model's captures were changed "
              "after the trainer was created"));
        }
      }
    }
    for (size_t k = first; k < last; ++k) {
      const auto& e = batch[order[k]];
      const int64_t b = static_cast<int64_t>(k - first);  // row in this forward
      const int64_t t = static_cast<int64_t>(e.target_ids.size());
      const int64_t answer = lengths[order[k]] - t;  // positions that predict the target tokens
      predicted[order[k]] = logits->narrow(0, logit_row, t);
      logit_row += t;
      if (aux_loss == nullptr) continue;
      const double per_example = 1.0 / static_cast<double>(batch.size());
      // The positions that predict the answer tokens of a pointer's span.
      auto span_rows = [&](const TrainPointer& ptr) {
        const int64_t from = std::min(ptr.first, t);
        const int64_t count = ptr.count < 0 ? t - from : std::min(ptr.count, t - from);
        std::vector<int64_t> rows;
        for (int64_t i = 0; i < count; ++i) rows.push_back(answer + from + i);
        return rows;
      };
      // The attention of `ptr`'s head in `layer`, from `rows` to
      // `positions`: [rows, positions]; undefined when there is nothing to
      // supervise.
      auto attention_at = [&](int layer, const TrainPointer& ptr, const std::vector<int64_t>& rows,
                              const std::vector<int64_t>& positions) {
        const at::Tensor& probs = model_->captured_attention(layer);
        if (rows.empty() || positions.empty() || ptr.head < 0 || ptr.head >= probs.size(1)) return at::Tensor();
        return probs[b][ptr.head]
            .index_select(0, at::tensor(rows, at::kLong))
            .index_select(1, at::tensor(positions, at::kLong));
      };
      // Adds `weight` times the mean of -log(`p`) to the auxiliary loss.
      auto add_log_loss = [&](double weight, const at::Tensor& p) {
        *aux_loss = *aux_loss - weight * at::log(p + 1e-6).mean() * per_example;
      };
      // The output of `ptr`'s head in `layer` at `rows`: [rows, head_dim].
      auto head_output_at = [&](int layer, const TrainPointer& ptr, const std::vector<int64_t>& rows) {
        return model_->captured_head_outputs(layer)[b][ptr.head].index_select(0, at::tensor(rows, at::kLong));
      };
      // What `ptr`'s head in `layer` read at `rows` should say where the
      // pointed thing is (read-out `w`, `b`).
      auto read_position = [&](const TrainPointer& ptr, int layer, const std::vector<int64_t>& rows,
                               const at::Tensor& w, const at::Tensor& bias, double* error_sum, int* count) {
        if (std::isnan(ptr.x) || std::isnan(ptr.y) || rows.empty()) return;
        const at::Tensor h = head_output_at(layer, ptr, rows);                        // [rows, hd]
        const at::Tensor where = at::linear(h, w[ptr.head], bias[ptr.head]);          // [rows, 2]
        const at::Tensor error = where - at::tensor({ptr.x, ptr.y}, at::kFloat).view({1, 2});
        if (report != nullptr) {
          *error_sum += error.abs().mean().item<double>();
          ++*count;
        }
        *aux_loss = *aux_loss + options_.position_loss_weight * error.pow(2).mean() * per_example;
      };
      if (offset_w_.defined() && !e.offsets.empty()) {
        const at::Tensor& hidden = model_->captured_final_hidden();
        if (!hidden.defined()) {
          return absl::FailedPreconditionError(
              "the final hidden states were not captured: the model's captures were changed after the trainer was "
              "created");
        }
        std::vector<int64_t> rows;
        std::vector<float> want;
        for (const TrainOffset& o : e.offsets) {
          if (o.token < 0 || o.token >= t) continue;
          rows.push_back(answer + o.token);
          want.insert(want.end(), {static_cast<float>(o.x), static_cast<float>(o.y)});
        }
        if (!rows.empty()) {
          const at::Tensor read =
              at::linear(hidden[b].index_select(0, at::tensor(rows, at::kLong)), offset_w_, offset_b_);
          const at::Tensor error = read - at::tensor(want, at::kFloat).view({-1, 2});
          if (report != nullptr) {
            report->offset_readout_error += error.abs().sum().item<double>();
            report->offset_readout_values += static_cast<int>(error.numel());
          }
          *aux_loss = *aux_loss + options_.offset_loss_weight * error.pow(2).mean() * per_example;
        }
      }
      for (const TrainPointer& ptr : e.pointers) {
        const std::vector<int64_t> rows = span_rows(ptr);
        const std::vector<int64_t> cells = PointerPositions(e, ptr.cells, *model_);
        const std::vector<int64_t> words = WordPositions(e, ptr.words, *model_);
        if (options_.word_loss_weight > 0) {
          // The head, in the word layer, from the positions that predict its
          // span, should read every word naming its thing, in equal shares:
          // a loss on their total mass alone is met by reading only the
          // easiest word of a name ("button" in "red circle button"), not
          // the ones that tell the things apart.
          const at::Tensor on = attention_at(options_.word_layer, ptr, rows, words);
          if (on.defined()) {
            if (report != nullptr) {
              report->word_mass += on.sum(1).mean().item<double>();
              report->word_least += std::get<0>(on.min(1)).mean().item<double>() * on.size(1);
              ++report->word_pointers;
            }
            add_log_loss(options_.word_loss_weight, on);
            if (word_position_w_.defined()) {
              read_position(ptr, options_.word_layer, rows, word_position_w_, word_position_b_,
                            report ? &report->word_position_error : nullptr, report ? &report->word_positions : nullptr);
            }
          }
        }
        if (options_.ground_loss_weight > 0 && !cells.empty()) {
          // The head, in the ground layer, at every word naming its thing,
          // should look at the thing's cells. Only words after the cells
          // can (attention is causal).
          std::vector<int64_t> after;
          for (int64_t w : words) {
            if (w > cells.back()) after.push_back(w);
          }
          const at::Tensor on = attention_at(options_.ground_layer, ptr, after, cells);
          if (on.defined()) {
            const at::Tensor mass = on.sum(1);
            if (report != nullptr) {
              report->ground_mass += mass.mean().item<double>();
              ++report->ground_pointers;
            }
            add_log_loss(options_.ground_loss_weight, mass);
            if (ground_position_w_.defined()) {
              read_position(ptr, options_.ground_layer, after, ground_position_w_, ground_position_b_,
                            report ? &report->ground_position_error : nullptr,
                            report ? &report->ground_positions : nullptr);
            }
          }
        }
        if (options_.attention_loss_weight > 0) {
          // The head, from the positions that predict its span, should rest
          // on the span's cells.
          // Sink tokens that are text (an image token's position is its
          // first cell's).
          std::vector<int64_t> sink;
          for (int64_t w : ptr.sink) {
            if (w >= 0 && w < static_cast<int64_t>(e.prompt_ids.size()) &&
                e.prompt_ids[w] != model_->image_token_id()) {
              sink.push_back(w);
            }
          }
          std::vector<int64_t> targets = cells;
          for (int64_t at_sink : WordPositions(e, sink, *model_)) targets.push_back(at_sink);
          const at::Tensor on = attention_at(options_.attention_layer, ptr, rows, targets);
          if (!on.defined()) continue;
          const at::Tensor mass = on.sum(1);
          if (report != nullptr && cells.empty()) {
            report->sink_mass += mass.mean().item<double>();
            ++report->sink_pointers;
          } else if (report != nullptr) {
            const double m = mass.mean().item<double>();
            report->attention_mass += m;
            ++report->pointers;
            if (report->head_mass.size() <= static_cast<size_t>(ptr.head)) {
              report->head_mass.resize(ptr.head + 1, 0.0);
              report->head_pointers.resize(ptr.head + 1, 0);
              report->head_others.resize(ptr.head + 1, 0.0);
              report->head_others_pointers.resize(ptr.head + 1, 0);
            }
            report->head_mass[ptr.head] += m;
            ++report->head_pointers[ptr.head];
            const at::Tensor off =
                attention_at(options_.attention_layer, ptr, rows, PointerPositions(e, OtherThings(e, ptr), *model_));
            if (off.defined()) {
              report->head_others[ptr.head] += off.sum(1).mean().item<double>();
              ++report->head_others_pointers[ptr.head];
            }
          }
          add_log_loss(options_.attention_loss_weight, mass);
          if (position_w_.defined()) {
            read_position(ptr, options_.attention_layer, rows, position_w_, position_b_,
                          report ? &report->position_error : nullptr, report ? &report->positions : nullptr);
          }
          // What the head reads at its span should name the pointed
          // thing's classes: its mark, its looks (after the solo phase: the
          // gradient reaches the tower through the values and would keep the
          // numbers from being learned there).
          at::Tensor read;  // the head's output at the span, taken once for all read-outs
          for (size_t k = 0; k < class_readouts_.size() && solo_ < 0 && !rows.empty(); ++k) {
            const ClassReadOut& r = class_readouts_[k];
            const int64_t want_class = r.look < 0                                    ? ptr.mark
                                       : r.look < static_cast<int>(ptr.looks.size()) ? ptr.looks[r.look]
                                                                                     : -1;
            if (want_class < 0 || want_class >= r.classes) continue;
            if (!read.defined()) read = head_output_at(options_.attention_layer, ptr, rows);
            const at::Tensor logits = at::linear(read, r.w[ptr.head], r.b[ptr.head]);
            const at::Tensor want = at::full({static_cast<int64_t>(rows.size())}, want_class, at::kLong);
            if (report != nullptr) {
              const double right = logits.argmax(1).eq(want).to(at::kFloat).mean().item<double>();
              if (r.look < 0) {
                report->mark_accuracy += right;
                ++report->marks;
              } else {
                report->look_accuracy[r.look] += right;
                ++report->looks[r.look];
              }
            }
            *aux_loss = *aux_loss + r.weight * at::cross_entropy_loss(logits, want) * per_example;
          }
        }
      }
    }
    first = last;
  }
  return predicted;
}

at::Tensor AnswerLoss(const at::Tensor& logits, const at::Tensor& targets, const std::vector<int64_t>& ordered_rows,
                      int64_t ordered_ids, double smoothing) {
  if (!(smoothing > 0) || ordered_ids <= 0 || ordered_rows.empty()) return at::cross_entropy_loss(logits, targets);
  const int64_t vocab = logits.size(1);
  const int64_t first = std::max<int64_t>(0, vocab - ordered_ids);
  const at::Tensor logp = at::log_softmax(logits, 1);
  at::Tensor loss = -logp.gather(1, targets.unsqueeze(1)).squeeze(1);
  const at::Tensor listed = at::tensor(ordered_rows, at::kLong);
  const at::Tensor ordered = listed.index_select(0, (targets.index_select(0, listed) >= first).nonzero().squeeze(1));
  if (ordered.numel() > 0) {
    // [n, 1] target bins against [1, m] bins: a Gaussian per row.
    const at::Tensor centre = (targets.index_select(0, ordered) - first).to(at::kFloat).unsqueeze(1);
    const at::Tensor bins = at::arange(vocab - first, at::kFloat).unsqueeze(0);
    at::Tensor q = at::exp(-(bins - centre).pow(2) / (2 * smoothing * smoothing));
    q = q / q.sum(1, true);
    const at::Tensor soft = -(q * logp.index_select(0, ordered).narrow(1, first, vocab - first)).sum(1);
    loss = loss.index_copy(0, ordered, soft);
  }
  return loss.mean();
}

absl::StatusOr<at::Tensor> Trainer::BatchLoss(const std::vector<TrainExample>& batch, at::Tensor* aux_loss) {
  auto predicted = TargetLogits(batch, aux_loss);
  if (!predicted.ok()) return predicted.status();
  std::vector<int64_t> targets, ordered_rows;
  for (const auto& e : batch) {
    for (int64_t i : e.ordered_targets) ordered_rows.push_back(static_cast<int64_t>(targets.size()) + i);
    targets.insert(targets.end(), e.target_ids.begin(), e.target_ids.end());
  }
  return AnswerLoss(at::cat(*predicted), at::tensor(targets, at::kLong), ordered_rows, options_.ordered_ids,
                    options_.bin_smoothing);
}

absl::StatusOr<std::vector<std::vector<int64_t>>> Trainer::Predict(const std::vector<TrainExample>& batch) {
  try {
    at::NoGradGuard no_grad;
    std::vector<std::vector<int64_t>> out;
    if (batch.empty()) return out;
    auto predicted = TargetLogits(batch);
    if (!predicted.ok()) return predicted.status();
    for (const auto& logits : *predicted) {
      at::Tensor ids = logits.argmax(-1).contiguous();
      out.emplace_back(ids.data_ptr<int64_t>(), ids.data_ptr<int64_t>() + ids.numel());
    }
    return out;
  } catch (const std::exception& e) {
    return absl::InternalError(absl::StrCat("predict: ", e.what()));
  }
}

absl::StatusOr<double> Trainer::Step(const std::vector<TrainExample>& batch) {
  if (batch.empty()) return absl::InvalidArgumentError("empty batch");
  try {
    for (auto& group : opt_->adamw.param_groups()) {
      static_cast<torch::optim::AdamWOptions&>(group.options()).lr(learning_rate());
    }
    opt_->adamw.zero_grad();
    at::Tensor aux_loss;
    // The solo phase holds for this step's losses only, also when they throw.
    const SoloPhase phase(&solo_, SoloHead(step_));
    auto loss = BatchLoss(batch, &aux_loss);
    if (!loss.ok()) return loss.status();
    (*loss + aux_loss).backward();
    last_aux_loss_ = aux_loss.item<double>();
    last_grad_norm_ = options_.clip_norm > 0
                          ? torch::nn::utils::clip_grad_norm_(params_, options_.clip_norm)
                          : torch::nn::utils::clip_grad_norm_(params_, std::numeric_limits<double>::infinity());
    opt_->adamw.step();
    ++step_;
    return loss->item<double>();
  } catch (const std::exception& e) {
    return absl::InternalError(absl::StrCat("training step: ", e.what()));
  }
}

absl::StatusOr<AuxiliaryReport> Trainer::Auxiliary(const std::vector<TrainExample>& batch) {
  try {
    at::NoGradGuard no_grad;
    AuxiliaryReport report;
    at::Tensor aux;
    // The heads as the current step trains them: in the solo phase, no
    // class read-outs to report.
    const SoloPhase phase(&solo_, SoloHead(step_));
    if (options_.look_loss_weight > 0) {
      report.look_accuracy.assign(options_.look_classes.size(), 0.0);
      report.looks.assign(options_.look_classes.size(), 0);
    }
    auto predicted = TargetLogits(batch, &aux, &report);
    if (!predicted.ok()) return predicted.status();
    // Sums to means over their counts (`none` when there is nothing).
    auto mean = [](double* sum, int n, double none = 0.0) { *sum = n > 0 ? *sum / n : none; };
    mean(&report.attention_mass, report.pointers);
    mean(&report.sink_mass, report.sink_pointers);
    for (size_t h = 0; h < report.head_mass.size(); ++h) {
      mean(&report.head_mass[h], report.head_pointers[h]);
      mean(&report.head_others[h], report.head_others_pointers[h], std::numeric_limits<double>::quiet_NaN());
    }
    mean(&report.position_error, report.positions);
    mean(&report.mark_accuracy, report.marks);
    for (size_t k = 0; k < report.looks.size(); ++k) mean(&report.look_accuracy[k], report.looks[k]);
    mean(&report.ground_mass, report.ground_pointers);
    mean(&report.ground_position_error, report.ground_positions);
    mean(&report.word_position_error, report.word_positions);
    mean(&report.word_mass, report.word_pointers);
    mean(&report.word_least, report.word_pointers);
    mean(&report.offset_readout_error, report.offset_readout_values);
    return report;
  } catch (const std::exception& e) {
    return absl::InternalError(absl::StrCat("auxiliary report: ", e.what()));
  }
}

std::vector<std::pair<std::string, at::Tensor>> Trainer::TrainingHeads() const {
  std::vector<std::pair<std::string, at::Tensor>> heads;
  if (cell_w_.defined()) heads.insert(heads.end(), {{"cell_w", cell_w_}, {"cell_b", cell_b_}});
  if (position_w_.defined()) heads.insert(heads.end(), {{"position_w", position_w_}, {"position_b", position_b_}});
  for (const auto& r : class_readouts_) heads.insert(heads.end(), {{r.name + "_w", r.w}, {r.name + "_b", r.b}});
  if (ground_position_w_.defined()) {
    heads.insert(heads.end(), {{"ground_position_w", ground_position_w_}, {"ground_position_b", ground_position_b_}});
  }
  if (word_position_w_.defined()) {
    heads.insert(heads.end(), {{"word_position_w", word_position_w_}, {"word_position_b", word_position_b_}});
  }
  if (offset_w_.defined()) heads.insert(heads.end(), {{"offset_w", offset_w_}, {"offset_b", offset_b_}});
  return heads;
}

absl::Status Trainer::SaveState(const std::string& path) const {
  try {
    torch::serialize::OutputArchive archive;
    opt_->adamw.save(archive);
    for (const auto& [name, head] : TrainingHeads()) archive.write(name, head);
    archive.write("magma_step", at::tensor(step_, at::kLong));
    archive.save_to(path);
    return absl::OkStatus();
  } catch (const std::exception& e) {
    return absl::InternalError(absl::StrCat("saving the optimizer state to ", path, ": ", e.what()));
  }
}

absl::Status Trainer::RestoreState(const std::string& path) {
  try {
    torch::serialize::InputArchive archive;
    archive.load_from(path);
    opt_->adamw.load(archive);
    for (const auto& [name, head] : TrainingHeads()) {
      at::Tensor saved;
      archive.read(name, saved);
      at::NoGradGuard no_grad;
      head.copy_(saved);
    }
    at::Tensor step;
    archive.read("magma_step", step);
    step_ = step.item<int64_t>();
    return absl::OkStatus();
  } catch (const std::exception& e) {
    return absl::InvalidArgumentError(absl::StrCat("restoring the optimizer state from ", path, ": ", e.what()));
  }
}

absl::StatusOr<double> Trainer::Loss(const std::vector<TrainExample>& batch) {
  try {
    at::NoGradGuard no_grad;
    if (batch.empty()) return 0.0;
    auto loss = BatchLoss(batch);
    if (!loss.ok()) return loss.status();
    return loss->item<double>();
  } catch (const std::exception& e) {
    return absl::InternalError(absl::StrCat("loss: ", e.what()));
  }
}

}  // namespace magma::model
