// Training a MagmaModel with libtorch autograd: next-token cross-entropy on
// target tokens after a prompt (with images), AdamW, linear warm-up then
// cosine decay, gradient-norm clipping.
//
// Threads: one thread at a time.
#ifndef MAGMA_MODEL_TRAINER_H_
#define MAGMA_MODEL_TRAINER_H_

#include <cstdint>
#include <limits>
#include <memory>
#include <string>
#include <utility>
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
  // Seed of the training-only heads' initial weights (the model's own come
  // from its checkpoint), so that a run is repeatable.
  uint64_t seed = 1;
  // Auxiliary supervision of the vision tower (training only; the heads are
  // not part of the checkpoint): a linear read-out of every tower output
  // cell, one classification head per entry (its number of classes), two
  // regressed offsets per item slot (cell_offset_items, e.g. the thing in the
  // cell and an overlay on it) and the cell's own position in its crop. Gives a
  // tower trained from scratch a dense signal long before the language model
  // learns to look at the image. Empty = off.
  std::vector<int64_t> cell_classes;
  int cell_offset_items = 1;
  double cell_loss_weight = 1.0;
  // Weight of each cell head's classification loss (empty = 1 for every
  // head, else one per cell_classes entry), of the offset regression and of
  // the cells' own position, all inside cell_loss_weight. A head at 0 still
  // gets its accuracy reported.
  std::vector<double> cell_head_weights;
  double cell_offset_weight = 10.0;
  // Per offset item (empty = cell_offset_weight for every item, else one
  // per item in place of it).
  std::vector<double> cell_offset_item_weights;
  double cell_where_weight = 10.0;
  // First phases in which the tower's cell heads learn one thing alone,
  // back to back from step 0: for `steps` steps the only cell loss is cell
  // head `head`'s classification (no other head, offsets or cell
  // positions, no class read-outs; the decoder's attention and position
  // losses and the answer loss as always). Small strokes (mark numbers,
  // label words) are learned there that a tower learning colours and kinds
  // at the same time does not pick up. Empty = no such phase.
  struct SoloCellPhase {
    int head = 0;
    int64_t steps = 0;
  };
  std::vector<SoloCellPhase> solo_cell_phases;
  // Attention supervision (training only): query heads of one decoder
  // layer, at the positions that predict a span of the answer, should attend
  // to the image cells that span is about (TrainExample::pointers). Teaches
  // the model where to look long before the answer loss alone would. 0 = off.
  double attention_loss_weight = 0;
  // The supervised layer: from 0, or negative from the end (-1: the last).
  // An earlier layer leaves the layers after it to turn what was read into
  // the answer.
  int attention_layer = -1;
  // Weight of a linear read-out, per supervised head, of the position of
  // what the head looks at (TrainPointer::x, y) from that head's output:
  // teaches the values to carry where things are, which the answer needs
  // (an action is the goal's position minus the gripper's). 0 = off; needs
  // attention_loss_weight > 0 (and reads the ground and word heads too when
  // ground_loss_weight > 0, see there).
  double position_loss_weight = 0;
  // Weight of a linear read-out, per supervised head, of the pointed
  // thing's class (TrainPointer::mark, one of mark_classes: the Set-of-Mark
  // id a click answer names) from that head's output at the span's
  // positions, cross-entropy: teaches the head to rest where the number is
  // drawn and its values to carry the number into the answer. Off in the
  // solo phases (solo_cell_phases). 0 = off; needs attention_loss_weight > 0.
  double mark_loss_weight = 0;
  int64_t mark_classes = 10;
  // Weight of more such read-outs, one per entry of look_classes (its
  // number of classes), of TrainPointer::looks: what the pointed thing
  // looks like (its kind and colour, its label), which an answer about it
  // names ("What color is the Save button?", "What is at mark 3?"). Off in
  // the solo phase too. 0 = off; needs attention_loss_weight > 0.
  double look_loss_weight = 0;
  std::vector<int64_t> look_classes;
  // Word attention supervision (training only): the same query heads, in an
  // earlier layer (word_layer), at the positions that predict the span,
  // should attend to the prompt words that name what the span is about
  // (TrainPointer::words: "red" in "put the red block on the blue plate",
  // "red circle button" on a screen), each word in an equal share. Teaches
  // the answer positions which words to carry into the query that finds the
  // thing in the image. 0 = off.
  double word_loss_weight = 0;
  int word_layer = 1;
  // Grounding supervision (training only): the same query heads, in
  // ground_layer, at each prompt word that names the pointed thing
  // (TrainPointer::words), should attend to that thing's cells. The image
  // comes before the prompt's words, so a word can look at what it names;
  // the answer positions then find the thing by reading the words
  // (word_layer after ground_layer, checked), instead of matching "red"
  // against the cells themselves. Words before the pointed cells cannot
  // look at them and are left out. 0 = off.
  // With position_loss_weight, the ground heads' outputs at the naming words
  // and the word heads' outputs at the answer positions get position
  // read-outs too: the words carry where their thing is once they look at
  // it, and the answer takes it from them.
  double ground_loss_weight = 0;
  int ground_layer = 0;
  // Weight of a linear read-out of two numbers (TrainExample::offsets: for
  // an action, where the goal is from the gripper) from the final hidden
  // state at the positions that predict chosen answer tokens, squared error:
  // a dense signal for the step from two positions to a move, which the
  // answer's few discrete moves alone give only at their boundaries. 0 =
  // off.
  double offset_loss_weight = 0;
  // The top `ordered_ids` ids of the vocabulary are ordered bins (the 256
  // action bins of a Magma model; 0 = none). With bin_smoothing > 0 an
  // answer token among them that its example lists as ordered
  // (TrainExample::ordered_targets) is trained toward a Gaussian over its
  // neighbouring bins (standard deviation bin_smoothing bins, cut to the
  // ordered ids and normalised) instead of its one bin, as a histogram loss
  // trains a regression: neighbouring bins support each other, so that a
  // policy unsure between close moves puts one peak where its reading of
  // the move is instead of spikes at the sizes it was shown. 0 = one bin.
  int64_t ordered_ids = 0;
  double bin_smoothing = 0;
};

// The answer loss: the mean over rows of the cross-entropy of `logits`
// [N, V] against `targets` (N ids), where the target of a row listed in
// `ordered_rows` that is among the top `ordered_ids` ids of V is a Gaussian
// over those ids of standard deviation `smoothing` ids around it
// (TrainOptions::bin_smoothing; 0 = the one id).
at::Tensor AnswerLoss(const at::Tensor& logits, const at::Tensor& targets, const std::vector<int64_t>& ordered_rows,
                      int64_t ordered_ids, double smoothing);

struct TrainImage {
  TrainImage() = default;
  TrainImage(at::Tensor crops, int rows, int cols) : crops(std::move(crops)), rows(rows), cols(cols) {}

  at::Tensor crops;  // [rows*cols, 3, S, S] float32
  int rows = 1, cols = 1;
  // Optional targets of the cell heads, per crop and tower output cell:
  // classes [rows*cols, h, w, heads] int64 (-1 = no target) and offsets
  // [rows*cols, h, w, 2 * TrainOptions::cell_offset_items] float32, x and y
  // per item (NaN = no target).
  at::Tensor cell_classes, cell_offsets;
};

// Where one query head should look while the model predicts a span of the
// answer (TrainOptions::attention_loss_weight, in attention_layer), which
// prompt words it should read first (word_loss_weight, word_layer) and what
// those words name (ground_loss_weight, ground_layer).
struct TrainPointer {
  int head = 0;
  int64_t first = 0;   // first target token of the span
  int64_t count = -1;  // its length; -1 = to the end of the target
  // Per image of the example, [rows*cols, h, w] bool: the tower cells to
  // look at (undefined: none in that image).
  std::vector<at::Tensor> cells;
  // Where the pointed thing is in the first image, as fractions of its
  // width and height (NaN: no position target).
  double x = std::numeric_limits<double>::quiet_NaN();
  double y = std::numeric_limits<double>::quiet_NaN();
  // Indices into TrainExample::prompt_ids of the tokens of the words that
  // name the pointed thing (empty: none).
  std::vector<int64_t> words;
  // The pointed thing's class for the mark read-out
  // (TrainOptions::mark_loss_weight; -1: none).
  int64_t mark = -1;
  // Its classes for the look read-outs, one per entry of
  // TrainOptions::look_classes (-1 or missing: none).
  std::vector<int64_t> looks;
  // Indices into TrainExample::prompt_ids of tokens the head should rest on
  // as well as `cells` (TrainOptions::attention_loss_weight): for a thing
  // that is not there, a place to look that says "nothing found" (softmax
  // attention must put its mass somewhere).
  std::vector<int64_t> sink;
};

// What the final hidden state at the position that predicts target token
// `token` should say (TrainOptions::offset_loss_weight).
struct TrainOffset {
  int64_t token = 0;
  double x = 0, y = 0;
};

struct TrainExample {
  std::vector<int64_t> prompt_ids;   // with one image token per image
  std::vector<TrainImage> images;
  std::vector<int64_t> target_ids;   // what the model should answer (not empty)
  std::vector<TrainPointer> pointers;
  std::vector<TrainOffset> offsets;
  // Indices into target_ids of the tokens that are ordered bins, which
  // TrainOptions::bin_smoothing smooths: an action's normalised dimensions,
  // not its gripper, whose two states are not neighbours of anything.
  std::vector<int64_t> ordered_targets;
};

// How well the training-only heads do on a batch (see TrainOptions).
struct AuxiliaryReport {
  // Per cell head: share of cells with a non-zero target ("something is
  // here") whose argmax is that target.
  std::vector<double> cell_accuracy;
  // Per offset item slot (TrainOptions::cell_offset_items): mean absolute error of
  // the regressed centre offsets, in cells (NaN: no target in the batch).
  std::vector<double> offset_error;
  // Mean absolute error of the cells' own position in their crop (0..1)
  // read from the tower's output.
  double where_error = 0;
  // Mean attention mass of each supervised head on its pointed cells, over
  // the positions of its span, averaged over the pointers with cells.
  double attention_mass = 0;
  int pointers = 0;
  // The same for the pointers with a sink and no cells (a thing that is
  // not there): mass on their sink tokens.
  double sink_mass = 0;
  int sink_pointers = 0;
  // The same per supervised head (index = head; heads without a pointer in
  // the batch have 0 pointers).
  std::vector<double> head_mass;
  std::vector<int> head_pointers;
  // Per supervised head, its mean mass on the cells of the other things in
  // the image (cells whose first cell head names something, outside the
  // pointed cells): a head that finds things but not the named one rests
  // here. Over the pointers whose images have cell targets (NaN: none).
  std::vector<double> head_others;
  std::vector<int> head_others_pointers;
  // Mean absolute error of the pointed positions read from the heads'
  // outputs (fractions of the image), over the pointers that have one.
  double position_error = 0;
  int positions = 0;
  // Share of the span positions whose mark read-out names the pointed
  // thing's class, over the pointers that have one.
  double mark_accuracy = 0;
  int marks = 0;
  // The same per look read-out (TrainOptions::look_classes).
  std::vector<double> look_accuracy;
  std::vector<int> looks;
  // Mean attention mass of the word layer's heads on their words.
  double word_mass = 0;
  // The least-read word's share times the number of words (1 = every word
  // read alike, 0 = some word not read).
  double word_least = 0;
  int word_pointers = 0;
  // Mean attention mass of the ground layer's heads, at the naming words,
  // on the named thing's cells.
  double ground_mass = 0;
  int ground_pointers = 0;
  // Mean absolute error of the pointed positions read from the word heads'
  // outputs at the answer positions (with grounding and a position loss).
  double word_position_error = 0;
  int word_positions = 0;
  // The same read from the ground heads' outputs at the naming words.
  double ground_position_error = 0;
  int ground_positions = 0;
  // Mean absolute error of the offset read-out (TrainExample::offsets, in
  // their units), over the numbers read (two per offset).
  double offset_readout_error = 0;
  int offset_readout_values = 0;
};

// OK if `options` can train a model with `decoder_layers` decoder layers:
// INVALID_ARGUMENT for a bad schedule or a supervised layer the model lacks.
// Trainer::Create checks the same; callers that build the model themselves
// can check first, before anything is written.
absl::Status CheckTrainOptions(const TrainOptions& options, int64_t decoder_layers);

class Trainer {
 public:
  // Makes `model` trainable (see MagmaModel::MakeTrainable). `model` must
  // outlive the trainer.
  static absl::StatusOr<std::unique_ptr<Trainer>> Create(MagmaModel* model, const TrainOptions& options);
  ~Trainer();

  // One optimizer step over `batch`; returns the mean loss per target token
  // (the cell heads' loss, when on, is added to what is minimised, not to
  // the returned value).
  absl::StatusOr<double> Step(const std::vector<TrainExample>& batch);

  // Mean loss per target token without updating (no autograd graph; cell
  // heads not included).
  absl::StatusOr<double> Loss(const std::vector<TrainExample>& batch);

  // Teacher-forced argmax at every target position of each example (the
  // answer greedy decoding gives when every earlier token is right).
  absl::StatusOr<std::vector<std::vector<int64_t>>> Predict(const std::vector<TrainExample>& batch);

  // The optimizer state (AdamW moments) and step count, for resuming a run
  // exactly: weights come back through MagmaModel::Load of the saved
  // checkpoint, this through Restore on a trainer created for it.
  absl::Status SaveState(const std::string& path) const;
  absl::Status RestoreState(const std::string& path);

  // The auxiliary heads on `batch` (no update).
  absl::StatusOr<AuxiliaryReport> Auxiliary(const std::vector<TrainExample>& batch);

  int64_t step() const { return step_; }
  // The weighted auxiliary losses (cell heads, attention) of the last Step.
  double last_aux_loss() const { return last_aux_loss_; }
  // Gradient norm of the last step, before clipping.
  double last_grad_norm() const { return last_grad_norm_; }
  double learning_rate() const;

 private:
  Trainer(MagmaModel* model, const TrainOptions& options, std::vector<at::Tensor> params);
  // Logits [target tokens, vocab] of each example, in batch order; with
  // `aux_loss`, also the weighted auxiliary losses (cell heads, attention).
  absl::StatusOr<std::vector<at::Tensor>> TargetLogits(const std::vector<TrainExample>& batch,
                                                      at::Tensor* aux_loss = nullptr,
                                                      AuxiliaryReport* report = nullptr);
  at::Tensor CellLoss(const at::Tensor& features, const std::vector<const TrainImage*>& images,
                      AuxiliaryReport* report) const;
  // Mean next-token loss over the target tokens of `batch` (with
  // `aux_loss`, also the weighted auxiliary losses).
  absl::StatusOr<at::Tensor> BatchLoss(const std::vector<TrainExample>& batch, at::Tensor* aux_loss = nullptr);
  struct Optimizer;
  MagmaModel* model_;
  TrainOptions options_;
  std::vector<at::Tensor> params_;
  // Cell heads: [sum(classes) + 2 * cell_offset_items + 2, tower channels]
  // and [same].
  at::Tensor cell_w_, cell_b_;
  at::Tensor position_w_, position_b_;  // pointer position read-out, [heads, 2, head_dim], [heads, 2]
  // Class read-outs from the pointer heads: the mark, then the looks.
  struct ClassReadOut {
    std::string name;  // in optimizer.pt: <name>_w, <name>_b
    int look = -1;     // index in TrainPointer::looks (-1: TrainPointer::mark)
    double weight = 0;
    int64_t classes = 0;
    at::Tensor w, b;  // [heads, classes, head_dim], [heads, classes]
  };
  std::vector<ClassReadOut> class_readouts_;
  at::Tensor word_position_w_, word_position_b_;      // the same from the word heads (grounding on)
  at::Tensor ground_position_w_, ground_position_b_;  // and from the ground heads at the naming words
  at::Tensor offset_w_, offset_b_;                    // offset read-out, [2, hidden], [2]
  // The training-only heads above that are in use, by their names in
  // optimizer.pt (handles sharing the heads' storage).
  std::vector<std::pair<std::string, at::Tensor>> TrainingHeads() const;
  std::unique_ptr<Optimizer> opt_;
  int64_t step_ = 0;
  // The cell head of the solo phase (TrainOptions::solo_cell_phases) the
  // current pass is in (-1: none).
  int solo_ = -1;
  // The solo phase's head at optimizer step `step` (-1: none).
  int SoloHead(int64_t step) const;
  double last_aux_loss_ = 0;
  double last_grad_norm_ = 0;
};

}  // namespace magma::model

#endif  // MAGMA_MODEL_TRAINER_H_
