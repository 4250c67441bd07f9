#include "magma/model/trainer.h"

#include <filesystem>
#include <functional>
#include <limits>
#include <optional>
#include <utility>

#include <ATen/ATen.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "magma/model/random_init.h"
#include "testing/temp_dir.h"

namespace magma::model {
namespace {

std::unique_ptr<MagmaModel> Tiny(const std::string& dir, const std::string& dtype) {
  auto preset = GetPreset("tiny");
  EXPECT_TRUE(WriteRandomModel(*preset, 21, dir).ok());
  LoadOptions o;
  o.dtype = dtype;
  o.log_progress = false;
  auto m = MagmaModel::Load(dir, o);
  EXPECT_TRUE(m.ok()) << m.status();
  return m.ok() ? *std::move(m) : nullptr;
}

// Most tests train the tiny random model (float32), made in a temporary
// directory for each test.
class TrainerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    model_ = Tiny(dir_.File("m"), "float32");
    ASSERT_NE(model_, nullptr);
  }
  MagmaModel* model() { return model_.get(); }

  testing::TempDir dir_;
  std::unique_ptr<MagmaModel> model_;
};

TrainExample Example() {
  at::manual_seed(4);
  TrainExample e;
  e.prompt_ids = {1, 17, 511, 44, 45};  // 511: the tiny preset's image token
  e.images.push_back({at::randn({2, 3, 64, 64}), 1, 2});
  e.target_ids = {100, 200, 300, 400};
  return e;
}

// The schedule most tests train with: learning rate 3e-3 after 5 warm-up steps.
TrainOptions Schedule(int64_t steps) {
  TrainOptions o;
  o.learning_rate = 3e-3;
  o.warmup_steps = 5;
  o.total_steps = steps;
  return o;
}

// A pointer of `head` to one tower cell of Example()'s image (2 crops of
// 2x2 cells), for the whole answer.
TrainPointer PointAt(int head, int crop, int row, int col) {
  TrainPointer p;
  p.head = head;
  p.cells = {at::zeros({2, 2, 2}, at::kBool)};
  p.cells[0][crop][row][col] = true;
  return p;
}

// The attention the model captures on Example()'s image with the prompt
// [bos, image, 44, 45] and answer tokens 100 200 300: [heads, T, T], where
// the expanded prompt is [bos, 2x(4 cells + separator), 44, 45, targets...]
// (cell (crop 0, 0, 0) at position 1, cell (crop 1, 1, 1) at 1 + 5 + 3),
// in decoder layer `layer`.
at::Tensor Captured(MagmaModel* m, const TrainExample& e, const std::vector<int64_t>& prompt, int layer) {
  at::NoGradGuard no_grad;
  auto f = m->EncodeImage(e.images[0].crops, 1, 2);
  EXPECT_TRUE(f.ok());
  if (!f.ok()) return {};
  auto x = m->EmbedPrompt(prompt, {*f});
  EXPECT_TRUE(x.ok());
  if (!x.ok()) return {};
  EXPECT_EQ(x->size(0), static_cast<int64_t>(prompt.size()) + 9);  // the image token stands for ten embeddings
  EXPECT_TRUE(m->ForwardBatch(x->unsqueeze(0)).ok());
  const at::Tensor& probs = m->captured_attention(layer);
  EXPECT_TRUE(probs.defined()) << "layer " << layer << " not captured";
  return probs.defined() ? probs[0].clone() : at::Tensor();
}

at::Tensor CapturedAttention(MagmaModel* m, const TrainExample& e, int layer = -1) {
  return Captured(m, e, {1, 511, 44, 45, 100, 200, 300}, layer);
}

// The first layer's probabilities for Example()'s own prompt [bos, 17,
// image, 44, 45] and three answer tokens (token 17 before the image, 44
// after it).
at::Tensor CapturedFirstLayer(MagmaModel* m, const TrainExample& e) {
  return Captured(m, e, {1, 17, 511, 44, 45, 100, 200, 300}, 0);
}

// The auxiliary report of `batch` before and after `steps` training steps on
// it (nothing, with a test failure, if a call fails).
// Example()'s image with two cell heads that name every cell of both crops
// (targets 1..4 and 4..1) and no offsets.
TrainExample TwoCellHeadsExample() {
  TrainExample e = Example();
  const at::Tensor up = at::arange(1, 5, at::kLong).view({1, 2, 2, 1}).repeat({2, 1, 1, 1});
  e.images[0].cell_classes = at::cat({up, 5 - up}, 3);
  e.images[0].cell_offsets = at::full({2, 2, 2, 2}, std::numeric_limits<float>::quiet_NaN());
  return e;
}

// Two examples whose instruction (prompt token 17 or 18) tells head 0 to
// look at crop 0's top-left cell or crop 1's bottom-right one; `set` gives
// pointer i what it should read there.
std::vector<TrainExample> TwoInstructedPointers(const std::function<void(int, TrainPointer*)>& set) {
  std::vector<TrainExample> batch;
  for (int i = 0; i < 2; ++i) {
    TrainExample e = Example();
    e.prompt_ids[1] = 17 + i;
    TrainPointer a = PointAt(0, i, i, i);
    set(i, &a);
    e.pointers = {a};
    batch.push_back(e);
  }
  return batch;
}

std::optional<std::pair<AuxiliaryReport, AuxiliaryReport>> TrainAndReport(Trainer* trainer,
                                                                         const std::vector<TrainExample>& batch,
                                                                         int steps) {
  auto before = trainer->Auxiliary(batch);
  EXPECT_TRUE(before.ok()) << before.status();
  if (!before.ok()) return std::nullopt;
  for (int i = 0; i < steps; ++i) {
    const auto loss = trainer->Step(batch);
    EXPECT_TRUE(loss.ok()) << loss.status();
    if (!loss.ok()) return std::nullopt;
  }
  auto after = trainer->Auxiliary(batch);
  EXPECT_TRUE(after.ok()) << after.status();
  if (!after.ok()) return std::nullopt;
  return std::make_pair(*std::move(before), *std::move(after));
}

TEST_F(TrainerTest, MemorisesOneExample) {
  TrainOptions o = Schedule(60);
  auto trainer = Trainer::Create(model(), o);
  ASSERT_TRUE(trainer.ok()) << trainer.status();
  const std::vector<TrainExample> batch = {Example()};
  auto before = (*trainer)->Loss(batch);
  ASSERT_TRUE(before.ok()) << before.status();
  EXPECT_GT(*before, 3.0);  // about log(512) for random weights
  for (int i = 0; i < 60; ++i) ASSERT_TRUE((*trainer)->Step(batch).ok());
  auto after = (*trainer)->Loss(batch);
  ASSERT_TRUE(after.ok());
  EXPECT_LT(*after, 0.1 * *before) << *before << " -> " << *after;
  EXPECT_EQ((*trainer)->step(), 60);
  auto predicted = (*trainer)->Predict(batch);
  ASSERT_TRUE(predicted.ok()) << predicted.status();
  EXPECT_EQ(predicted->front(), batch[0].target_ids);

  // Greedy decoding now reproduces the targets.
  const TrainExample& e = batch[0];
  auto f = model()->EncodeImage(e.images[0].crops, 1, 2);
  ASSERT_TRUE(f.ok());
  auto embeds = model()->EmbedPrompt(e.prompt_ids, {*f});
  ASSERT_TRUE(embeds.ok());
  KvCache cache(model()->config().text, 1, 64, at::kFloat);
  const int slot = cache.Allocate();
  auto logits = model()->Prefill(embeds->detach(), &cache, slot);
  ASSERT_TRUE(logits.ok()) << logits.status();
  std::vector<int64_t> got = {logits->argmax().item<int64_t>()};
  for (int i = 1; i < 4; ++i) {
    auto step = model()->Decode({got.back()}, {slot}, &cache);
    ASSERT_TRUE(step.ok()) << step.status();
    got.push_back((*step)[0].argmax().item<int64_t>());
  }
  EXPECT_EQ(got, e.target_ids);

  // The saved weights load back as a checkpoint with the same answer.
  const std::string out = dir_.File("trained");
  std::filesystem::create_directories(out);
  for (const char* f : {"config.json", "preprocessor_config.json"}) {
    std::filesystem::copy_file(dir_.File("m") + "/" + f, out + "/" + f);
  }
  ASSERT_TRUE(model()->SaveWeights(out + "/model.safetensors").ok());
  LoadOptions lo;
  lo.dtype = "float32";
  auto reloaded = MagmaModel::Load(out, lo);
  ASSERT_TRUE(reloaded.ok()) << reloaded.status();
  auto f2 = (*reloaded)->EncodeImage(e.images[0].crops, 1, 2);
  auto embeds2 = (*reloaded)->EmbedPrompt(e.prompt_ids, {*f2});
  KvCache cache2((*reloaded)->config().text, 1, 64, at::kFloat);
  auto logits2 = (*reloaded)->Prefill(*embeds2, &cache2, cache2.Allocate());
  ASSERT_TRUE(logits2.ok());
  EXPECT_EQ(logits2->argmax().item<int64_t>(), e.target_ids[0]);
  EXPECT_LE((*logits2 - logits->detach()).abs().max().item<double>(), 1e-4);
}

// The answer depends only on the image: training must carry information
// from the pixels through tower, projector and decoder.
TEST_F(TrainerTest, LearnsAnAnswerThatOnlyTheImageGives) {
  TrainOptions o;
  o.learning_rate = 2e-3;
  o.warmup_steps = 5;
  o.total_steps = 150;
  auto trainer = Trainer::Create(model(), o);
  ASSERT_TRUE(trainer.ok());
  at::manual_seed(5);
  std::vector<TrainExample> batch;
  for (int i = 0; i < 4; ++i) {
    TrainExample e;
    e.prompt_ids = {1, 511, 44, 45};
    at::Tensor crop = at::randn({1, 3, 64, 64}) * 0.1;
    crop.select(1, i % 2 == 0 ? 0 : 2).add_(2.0);  // "red" or "blue"
    e.images.push_back({crop, 1, 1});
    e.target_ids = {i % 2 == 0 ? 100 : 200};
    batch.push_back(e);
  }
  for (int step = 0; step < 150; ++step) ASSERT_TRUE((*trainer)->Step(batch).ok());
  auto predicted = (*trainer)->Predict(batch);
  ASSERT_TRUE(predicted.ok());
  for (int i = 0; i < 4; ++i) EXPECT_EQ((*predicted)[i][0], batch[i].target_ids[0]) << i;
}

// Trains `e` alone for `steps` steps with the attention loss on (Schedule()
// otherwise): the reports before and after. `*trainer` keeps the trainer.
std::optional<std::pair<AuxiliaryReport, AuxiliaryReport>> TrainPointers(MagmaModel* m, const TrainExample& e,
                                                                         int steps, std::unique_ptr<Trainer>* trainer) {
  TrainOptions o = Schedule(steps);
  o.attention_loss_weight = 1.0;
  auto created = Trainer::Create(m, o);
  EXPECT_TRUE(created.ok()) << created.status();
  if (!created.ok()) return std::nullopt;
  *trainer = *std::move(created);
  return TrainAndReport(trainer->get(), {e}, steps);
}

// Pointers teach chosen query heads where to look: head 0 at the first
// crop's top-left cell for the whole answer, head 1 at the second crop's
// bottom-right cell for the last two answer tokens. The tiny preset's 64-pixel
// crops give 2x2 cells each; the image's 2 rows of 4 cells and a separator
// after each row start at position 1 of the prompt.
TEST_F(TrainerTest, PointersTeachHeadsWhereToLook) {
  TrainExample e = Example();
  TrainPointer b = PointAt(1, 1, 1, 1);
  b.first = 2;
  b.count = 2;
  e.pointers = {PointAt(0, 0, 0, 0), b};
  std::unique_ptr<Trainer> trainer;
  const auto reports = TrainPointers(model(), e, 80, &trainer);
  ASSERT_TRUE(reports.has_value());
  const auto& [before, after] = *reports;
  EXPECT_EQ(before.pointers, 2);
  EXPECT_EQ(after.pointers, 2);
  EXPECT_LT(before.attention_mass, 0.2);
  EXPECT_GT(after.attention_mass, 0.9) << before.attention_mass << " -> " << after.attention_mass;
  // The report also gives each head's own mass.
  ASSERT_EQ(after.head_mass.size(), 2u);
  EXPECT_EQ(after.head_pointers, (std::vector<int>{1, 1}));
  EXPECT_GT(after.head_mass[0], 0.9);
  EXPECT_GT(after.head_mass[1], 0.9);
  EXPECT_NEAR(after.attention_mass, (after.head_mass[0] + after.head_mass[1]) / 2, 1e-6);
  // The captured probabilities say the same per head.
  const at::Tensor probs = CapturedAttention(model(), e);
  ASSERT_TRUE(probs.defined());
  for (int64_t t = 12; t < 16; ++t) EXPECT_GT(probs[0][t][1].item<double>(), 0.8) << t;  // head 0, all targets
  for (int64_t t = 14; t < 16; ++t) EXPECT_GT(probs[1][t][9].item<double>(), 0.8) << t;  // head 1, targets 2-3
}

// A pointer with no cells and a sink teaches its head to rest on the sink's
// prompt token (position 0 here, the first token of [bos, 17, image, ...]).
TEST_F(TrainerTest, SinksGiveAPointerWithNothingToPointAtAPlaceToRest) {
  TrainExample e = Example();
  TrainPointer p;
  p.head = 1;
  p.sink = {0};
  e.pointers = {p};
  std::unique_ptr<Trainer> trainer;
  const auto reports = TrainPointers(model(), e, 80, &trainer);
  ASSERT_TRUE(reports.has_value());
  const auto& [before, after] = *reports;
  // Reported apart from the pointers with cells.
  EXPECT_EQ(before.pointers, 0);
  EXPECT_EQ(before.sink_pointers, 1);
  EXPECT_LT(before.sink_mass, 0.5);
  EXPECT_GT(after.sink_mass, 0.9) << before.sink_mass << " -> " << after.sink_mass;
  const at::Tensor last = Captured(model(), e, {1, 17, 511, 44, 45, 100, 200, 300}, -1);
  ASSERT_TRUE(last.defined());
  for (int64_t t = 13; t < 17; ++t) EXPECT_GT(last[1][t][0].item<double>(), 0.8) << t;  // head 1, all targets
  // A sink on the image token (prompt index 2) is no sink: nothing to rest on.
  e.pointers[0].sink = {2};
  auto on_image = trainer->Auxiliary({e});
  ASSERT_TRUE(on_image.ok()) << on_image.status();
  EXPECT_EQ(on_image->sink_pointers, 0);
  EXPECT_EQ(on_image->pointers, 0);
}

// An example that lists a target outside its answer as ordered is refused
// before anything trains.
TEST_F(TrainerTest, RefusesOrderedTargetsOutsideTheAnswer) {
  auto trainer = Trainer::Create(model(), Schedule(10));
  ASSERT_TRUE(trainer.ok()) << trainer.status();
  for (int64_t bad : {4, -1}) {
    TrainExample e = Example();
    e.ordered_targets = {0, bad};
    const absl::Status s = (*trainer)->Step({e}).status();
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << bad;
    EXPECT_THAT(s.message(), ::testing::HasSubstr("it has 4 target tokens")) << s;
    EXPECT_EQ((*trainer)->step(), 0);
  }
}

// The supervised layer can be any decoder layer: here the first of the tiny
// preset's two, whose head 0 learns to look at the first crop's top-left
// cell (prompt position 1) while the last layer is left alone. A layer the
// model does not have is INVALID_ARGUMENT.
TEST_F(TrainerTest, PointersSuperviseTheChosenLayer) {
  TrainOptions o = Schedule(80);
  o.attention_loss_weight = 1.0;
  for (int bad : {2, -3}) {
    o.attention_layer = bad;
    auto t = Trainer::Create(model(), o);
    ASSERT_FALSE(t.ok()) << bad;
    EXPECT_EQ(t.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(t.status().message(), ::testing::HasSubstr("2 decoder layers")) << t.status();
  }
  o.attention_layer = 0;
  auto trainer = Trainer::Create(model(), o);
  ASSERT_TRUE(trainer.ok()) << trainer.status();
  TrainExample e = Example();
  e.pointers = {PointAt(0, 0, 0, 0)};
  const std::vector<TrainExample> batch = {e};
  for (int i = 0; i < 80; ++i) ASSERT_TRUE((*trainer)->Step(batch).ok());
  const at::Tensor first = CapturedAttention(model(), e, 0);
  model()->SetCaptureLayers({-1});
  const at::Tensor last = CapturedAttention(model(), e, -1);
  ASSERT_TRUE(first.defined() && last.defined());
  double last_mass = 0;
  for (int64_t t = 12; t < 16; ++t) {
    EXPECT_GT(first[0][t][1].item<double>(), 0.8) << t;
    last_mass += last[0][t][1].item<double>() / 4;
  }
  EXPECT_LT(last_mass, 0.5);  // the last layer was not taught to look there
  // The trainer needs the layer it supervises captured.
  const auto step = (*trainer)->Step(batch);
  EXPECT_EQ(step.status().code(), absl::StatusCode::kFailedPrecondition) << step.status();
}

// The same checks without a model, for callers that check before they write
// one: layers count from 0 or back from -1, and a layer flag only matters
// when its loss is on.
TEST(TrainOptionsTest, AreCheckedAgainstALayerCount) {
  TrainOptions o = Schedule(10);
  EXPECT_TRUE(CheckTrainOptions(o, 4).ok());
  o.attention_loss_weight = 1.0;
  for (int good : {0, 3, -1, -4}) {
    o.attention_layer = good;
    EXPECT_TRUE(CheckTrainOptions(o, 4).ok()) << good;
  }
  for (int bad : {4, -5}) {
    o.attention_layer = bad;
    const absl::Status s = CheckTrainOptions(o, 4);
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << bad;
    EXPECT_THAT(s.message(), ::testing::HasSubstr("4 decoder layers")) << s;
  }
  o.attention_layer = -1;
  o.word_layer = 9;  // ignored while the word loss is off
  EXPECT_TRUE(CheckTrainOptions(o, 4).ok());
  o.word_loss_weight = 0.5;
  EXPECT_EQ(CheckTrainOptions(o, 4).code(), absl::StatusCode::kInvalidArgument);
  o.word_layer = 1;
  o.ground_layer = 4;  // ignored while the grounding loss is off
  EXPECT_TRUE(CheckTrainOptions(o, 4).ok());
  o.ground_loss_weight = 1.0;
  const absl::Status ground = CheckTrainOptions(o, 4);
  EXPECT_EQ(ground.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(ground.message(), ::testing::HasSubstr("ground_layer 4")) << ground;
  o.ground_layer = 0;
  EXPECT_TRUE(CheckTrainOptions(o, 4).ok());
  // The words look at their things before the answer reads them.
  o.word_layer = -4;  // layer 0, the ground layer
  const absl::Status order = CheckTrainOptions(o, 4);
  EXPECT_EQ(order.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(order.message(), ::testing::HasSubstr("must come before word_layer")) << order;
  o.word_layer = 1;
  o.total_steps = 0;
  EXPECT_EQ(CheckTrainOptions(o, 4).code(), absl::StatusCode::kInvalidArgument);
}

// The answer loss by hand: a row whose target is not among the ordered top
// ids, or that its example does not list as ordered, is the plain
// cross-entropy; a listed ordered one is the cross-entropy against a
// Gaussian over the ordered ids around it.
TEST(AnswerLossTest, SmoothsOnlyListedTargetsAmongTheOrderedIds) {
  const std::vector<std::vector<double>> rows = {
      {0.5, -1.0, 2.0, 0.0, 1.0, -0.5}, {1.0, 0.0, -2.0, 0.5, 3.0, 1.5}, {-0.5, 2.5, 0.0, 1.0, -1.0, 0.5}};
  // 4 is the middle of the ordered ids 3, 4, 5; so is row 2's, not listed.
  const std::vector<int64_t> targets = {1, 4, 4};
  std::vector<float> flat;
  for (const auto& r : rows) flat.insert(flat.end(), r.begin(), r.end());
  const at::Tensor logits = at::tensor(flat, at::kFloat).view({3, 6});
  const at::Tensor t = at::tensor(targets, at::kLong);
  auto log_p = [&](int row, int id) {
    double z = 0;
    for (double v : rows[row]) z += std::exp(v);
    return rows[row][id] - std::log(z);
  };
  const std::vector<int64_t> listed = {0, 1};  // row 0's target is not ordered: plain all the same
  const double plain = (-log_p(0, 1) - log_p(1, 4) - log_p(2, 4)) / 3;
  // sigma 1: weights exp(-1/2), 1, exp(-1/2) on ids 3, 4, 5.
  const double side = std::exp(-0.5), norm = 1 + 2 * side;
  const double soft = -(side * log_p(1, 3) + log_p(1, 4) + side * log_p(1, 5)) / norm;
  const double smoothed = (-log_p(0, 1) + soft - log_p(2, 4)) / 3;
  EXPECT_NEAR(AnswerLoss(logits, t, listed, 3, 0).item<double>(), plain, 1e-5);
  EXPECT_NEAR(AnswerLoss(logits, t, listed, 0, 1.0).item<double>(), plain, 1e-5);
  EXPECT_NEAR(AnswerLoss(logits, t, {}, 3, 1.0).item<double>(), plain, 1e-5);
  EXPECT_NEAR(AnswerLoss(logits, t, {0}, 3, 1.0).item<double>(), plain, 1e-5);  // listed, not ordered
  EXPECT_NEAR(AnswerLoss(logits, t, listed, 3, 1.0).item<double>(), smoothed, 1e-5);
  // Ordered ids 4 and 5 only: id 4 is bin 0, its Gaussian cut to bins 0
  // and 1 (weights 1 and exp(-1/2)).
  const double cut = -(log_p(1, 4) + side * log_p(1, 5)) / (1 + side);
  EXPECT_NEAR(AnswerLoss(logits, t, listed, 2, 1.0).item<double>(), (-log_p(0, 1) + cut - log_p(2, 4)) / 3, 1e-5);
  TrainOptions o = Schedule(10);
  o.bin_smoothing = -1;
  const absl::Status s = CheckTrainOptions(o, 4);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), ::testing::HasSubstr("bin_smoothing (-1) must be >= 0")) << s;
}

// Grounding teaches the words that name a thing to look at it: head 1 of the
// first layer, at prompt token 44 (index 3, position 12, after the image),
// learns to rest on the second crop's bottom-right cell (position 2 + 5 +
// 3 = 10), the cell its pointer names.
TEST_F(TrainerTest, GroundingTeachesNamingWordsWhereTheirThingIs) {
  TrainOptions o = Schedule(80);
  o.ground_loss_weight = 1.0;
  o.ground_layer = 0;
  auto trainer = Trainer::Create(model(), o);
  ASSERT_TRUE(trainer.ok()) << trainer.status();
  TrainExample e = Example();
  TrainPointer p = PointAt(1, 1, 1, 1);
  p.words = {3};
  e.pointers = {p};
  const auto reports = TrainAndReport(trainer->get(), {e}, 80);
  ASSERT_TRUE(reports.has_value());
  const auto& [before, after] = *reports;
  EXPECT_EQ(before.ground_pointers, 1);
  EXPECT_EQ(before.pointers, 0);  // no answer-position supervision asked for
  EXPECT_EQ(before.word_pointers, 0);
  EXPECT_LT(before.ground_mass, 0.3);
  EXPECT_GT(after.ground_mass, 0.9) << before.ground_mass << " -> " << after.ground_mass;
  const at::Tensor probs = CapturedFirstLayer(model(), e);
  ASSERT_TRUE(probs.defined());
  EXPECT_GT(probs[1][12][10].item<double>(), 0.8);
}

// Word pointers teach a chosen layer's heads which prompt words to read:
// head 0 of the first layer, from every answer position, at the prompt token
// after the image (Example()'s prompt [bos, 17, image, 44, 45]: token 44 is
// prompt index 3 and position 2 + 10 = 12 once the image's ten embeddings
// stand in for its token). A layer the model does not have is
// INVALID_ARGUMENT.
TEST_F(TrainerTest, WordPointersTeachTheWordLayer) {
  TrainOptions o = Schedule(80);
  o.word_loss_weight = 1.0;
  o.word_layer = 2;
  auto bad = Trainer::Create(model(), o);
  ASSERT_FALSE(bad.ok());
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(bad.status().message(), ::testing::HasSubstr("word_layer 2 is not one of the 2 decoder layers"));
  o.word_layer = 0;
  auto trainer = Trainer::Create(model(), o);
  ASSERT_TRUE(trainer.ok()) << trainer.status();
  TrainExample e = Example();
  TrainPointer p;
  p.head = 0;
  p.words = {3};
  e.pointers = {p};
  const std::vector<TrainExample> batch = {e};
  const auto reports = TrainAndReport(trainer->get(), batch, 80);
  ASSERT_TRUE(reports.has_value());
  const auto& [before, after] = *reports;
  EXPECT_EQ(before.word_pointers, 1);
  EXPECT_EQ(before.pointers, 0);  // no cell supervision asked for
  EXPECT_LT(before.word_mass, 0.3);
  EXPECT_GT(after.word_mass, 0.9) << before.word_mass << " -> " << after.word_mass;
  // The same in the probabilities the model keeps, from the positions that
  // predict the four answer tokens (13: token 45, then the first three).
  const at::Tensor probs = CapturedFirstLayer(model(), e);
  ASSERT_TRUE(probs.defined());
  for (int64_t t = 13; t < 17; ++t) EXPECT_GT(probs[0][t][12].item<double>(), 0.8) << t;
}

// A pointer named by several words reads each of them, in equal shares:
// here prompt token 17 (index 1, position 1) and token 44 (index 3, position
// 12), so about half of head 0's attention on each rather than all of it on
// whichever is easier to find.
TEST_F(TrainerTest, WordPointersReadEveryWord) {
  TrainOptions o = Schedule(80);
  o.word_loss_weight = 1.0;
  o.word_layer = 0;
  auto trainer = Trainer::Create(model(), o);
  ASSERT_TRUE(trainer.ok()) << trainer.status();
  TrainExample e = Example();
  TrainPointer p;
  p.head = 0;
  p.words = {1, 3};
  e.pointers = {p};
  const auto reports = TrainAndReport(trainer->get(), {e}, 80);
  ASSERT_TRUE(reports.has_value());
  const auto& [before, after] = *reports;
  EXPECT_GT(after.word_mass, 0.9) << before.word_mass << " -> " << after.word_mass;
  EXPECT_GT(after.word_least, 0.8) << before.word_least << " -> " << after.word_least;
  const at::Tensor probs = CapturedFirstLayer(model(), e);
  ASSERT_TRUE(probs.defined());
  for (int64_t t = 13; t < 17; ++t) {
    EXPECT_NEAR(probs[0][t][1].item<double>(), 0.5, 0.1) << t;
    EXPECT_NEAR(probs[0][t][12].item<double>(), 0.5, 0.1) << t;
  }
}

// With a position loss, grounding also reads where the named thing is from
// the ground head's output at its word and from the word head's output at the
// answer positions (where the answer gets it from the word). Two examples
// (one image, two words) name different cells at different places, so a
// read-out that ignores what the heads read is off by at least 0.4 on one of
// them; trained, both read each place. Without grounding there are no such
// read-outs.
TEST_F(TrainerTest, GroundedWordsCarryWhereTheirThingIs) {
  TrainOptions o = Schedule(150);
  o.position_loss_weight = 1.0;
  o.word_loss_weight = 1.0;
  o.word_layer = 1;
  o.ground_layer = 0;
  std::vector<TrainExample> batch = {Example(), Example()};
  TrainPointer p = PointAt(1, 1, 1, 1);
  p.words = {3};
  p.x = 0.9;
  p.y = 0.1;
  batch[0].pointers = {p};
  batch[1].prompt_ids[3] = 46;  // another word, naming another cell
  p = PointAt(1, 0, 0, 0);
  p.words = {3};
  p.x = 0.1;
  p.y = 0.9;
  batch[1].pointers = {p};
  {
    auto other = Tiny(dir_.File("m2"), "float32");
    ASSERT_NE(other, nullptr);
    auto plain = Trainer::Create(other.get(), o);
    ASSERT_TRUE(plain.ok()) << plain.status();
    auto report = (*plain)->Auxiliary(batch);
    ASSERT_TRUE(report.ok()) << report.status();
    EXPECT_EQ(report->word_pointers, 2);
    EXPECT_EQ(report->word_positions, 0);
    EXPECT_EQ(report->ground_positions, 0);
  }
  o.ground_loss_weight = 1.0;
  auto trainer = Trainer::Create(model(), o);
  ASSERT_TRUE(trainer.ok()) << trainer.status();
  const auto reports = TrainAndReport(trainer->get(), batch, 150);
  ASSERT_TRUE(reports.has_value());
  const auto& [before, after] = *reports;
  EXPECT_EQ(before.ground_positions, 2);
  EXPECT_EQ(before.word_positions, 2);
  EXPECT_GT(before.ground_position_error, 0.2);
  EXPECT_GT(before.word_position_error, 0.2);
  EXPECT_GT(after.ground_mass, 0.9);
  EXPECT_LT(after.ground_position_error, 0.1) << before.ground_position_error;
  EXPECT_LT(after.word_position_error, 0.1) << before.word_position_error;
}

// The cell heads: one class per tower cell (here the cell's index in its
// crop, 1..4) and each cell's own position in its crop, read from the
// tower's output; the report says how well both are read.
TEST_F(TrainerTest, CellHeadsReportWhatAndWhere) {
  TrainOptions o = Schedule(100);
  o.cell_classes = {5};
  o.seed = 5;  // the cell head's initial weights
  auto trainer = Trainer::Create(model(), o);
  ASSERT_TRUE(trainer.ok()) << trainer.status();
  TrainExample e = Example();
  e.images[0].cell_classes = (at::arange(1, 5, at::kLong).view({1, 2, 2, 1})).repeat({2, 1, 1, 1});
  e.images[0].cell_offsets = at::full({2, 2, 2, 2}, std::numeric_limits<float>::quiet_NaN());
  const std::vector<TrainExample> batch = {e};
  const auto reports = TrainAndReport(trainer->get(), batch, 100);
  ASSERT_TRUE(reports.has_value());
  const auto& [before, after] = *reports;
  ASSERT_EQ(before.cell_accuracy.size(), 1u);
  EXPECT_EQ(after.cell_accuracy[0], 1.0);
  // Cell centres are at 0.25 and 0.75 of the crop: a head that knows
  // nothing is off by about 0.25.
  EXPECT_GT(before.where_error, 0.1);
  EXPECT_LT(after.where_error, 0.05) << before.where_error;
  ASSERT_EQ(after.offset_error.size(), 1u);
  EXPECT_TRUE(std::isnan(after.offset_error[0]));  // no offsets to learn
}

// The training-only heads start from TrainOptions::seed, not from
// libtorch's default generator (seeded anew in every process): two trainers
// with one seed on two copies of a model take the same steps, whatever was
// drawn from the default generator before; another seed starts elsewhere.
TEST_F(TrainerTest, StepsAreRepeatableFromTheSeed) {
  TrainExample e = TwoCellHeadsExample();
  TrainPointer p = PointAt(0, 1, 1, 0);
  p.x = 0.625;
  p.y = 0.75;
  e.pointers = {p};
  auto run = [&](uint64_t seed, int64_t draw) -> std::vector<double> {
    auto m = Tiny(dir_.File("m" + std::to_string(seed) + "_" + std::to_string(draw)), "float32");
    if (m == nullptr) return {};
    TrainOptions o = Schedule(10);
    o.cell_classes = {5, 5};
    o.attention_loss_weight = 1.0;
    o.position_loss_weight = 10.0;
    o.seed = seed;
    at::manual_seed(static_cast<uint64_t>(draw));
    (void)at::randn({draw});
    auto trainer = Trainer::Create(m.get(), o);
    EXPECT_TRUE(trainer.ok()) << trainer.status();
    if (!trainer.ok()) return {};
    std::vector<double> losses;
    for (int i = 0; i < 3; ++i) {
      auto loss = (*trainer)->Step({e});
      EXPECT_TRUE(loss.ok()) << loss.status();
      if (!loss.ok()) return {};
      losses.push_back(*loss);
      losses.push_back((*trainer)->last_aux_loss());
    }
    return losses;
  };
  const std::vector<double> a = run(3, 1), b = run(3, 2), c = run(4, 1);
  ASSERT_EQ(a.size(), 6u);
  EXPECT_EQ(a, b);
  ASSERT_EQ(c.size(), 6u);
  EXPECT_EQ(a[0], c[0]);  // the model's own weights come from its checkpoint
  EXPECT_NE(a[1], c[1]);  // the heads' from the seed
}

// Cell head weights, offsets, positions and the solo phase are checked
// against the cell heads.
TEST(TrainOptionsTest, CellOptionsAreChecked) {
  TrainOptions o = Schedule(10);
  o.cell_classes = {5, 3};
  o.cell_head_weights = {1.0, 0.0};
  o.solo_cell_phases = {{1, 5}, {0, 5}};
  EXPECT_TRUE(CheckTrainOptions(o, 4).ok());
  o.cell_head_weights = {1.0};
  const absl::Status count = CheckTrainOptions(o, 4);
  EXPECT_EQ(count.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(count.message(), ::testing::HasSubstr("1 cell head weights for 2 cell heads")) << count;
  o.cell_head_weights = {1.0, -1.0};
  EXPECT_EQ(CheckTrainOptions(o, 4).code(), absl::StatusCode::kInvalidArgument);
  o.cell_head_weights = {};
  o.solo_cell_phases = {{1, 5}, {2, 5}};
  const absl::Status solo = CheckTrainOptions(o, 4);
  EXPECT_EQ(solo.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(solo.message(), ::testing::HasSubstr("solo cell head 2 for 5 steps is not one of the 2 cell heads"))
      << solo;
  o.solo_cell_phases = {{1, -1}};
  EXPECT_EQ(CheckTrainOptions(o, 4).code(), absl::StatusCode::kInvalidArgument);
  o.solo_cell_phases = {};
  EXPECT_TRUE(CheckTrainOptions(o, 4).ok());
  o.cell_where_weight = -1;
  EXPECT_EQ(CheckTrainOptions(o, 4).code(), absl::StatusCode::kInvalidArgument);
  o.cell_where_weight = 10;
  o.offset_loss_weight = -1;
  const absl::Status offset = CheckTrainOptions(o, 4);
  EXPECT_EQ(offset.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(offset.message(), ::testing::HasSubstr("offset_loss_weight")) << offset;
}

// In the solo phase only the chosen cell head learns: with two heads that
// each name every cell of Example()'s image (targets 1..4 and 4..1), 60 solo
// steps of head 1 teach head 1 and leave head 0 and the cells' positions as
// they were; the same steps without the phase teach both.
TEST_F(TrainerTest, SoloPhaseTeachesOneCellHeadAlone) {
  const TrainExample e = TwoCellHeadsExample();
  for (const int64_t solo : {60, 0}) {
    testing::TempDir dir;
    auto m = Tiny(dir.File("m"), "float32");
    ASSERT_NE(m, nullptr);
    TrainOptions o = Schedule(60);
    o.cell_classes = {5, 5};
    if (solo > 0) o.solo_cell_phases = {{1, solo}};
    auto trainer = Trainer::Create(m.get(), o);
    ASSERT_TRUE(trainer.ok()) << trainer.status();
    const auto reports = TrainAndReport(trainer->get(), {e}, 60);
    ASSERT_TRUE(reports.has_value());
    const auto& [before, after] = *reports;
    ASSERT_EQ(after.cell_accuracy.size(), 2u);
    EXPECT_EQ(after.cell_accuracy[1], 1.0) << solo;
    if (solo > 0) {
      EXPECT_LT(after.cell_accuracy[0], 1.0);
      EXPECT_GT(after.where_error, 0.1) << before.where_error;
    } else {
      EXPECT_EQ(after.cell_accuracy[0], 1.0);
      EXPECT_LT(after.where_error, 0.1) << before.where_error;
    }
  }
}

// Solo phases follow each other: 60 steps of head 1 alone, then 60 of
// head 0 alone. After the first, head 1 names its cells and head 0 does
// not; after the second head 0 does (head 1, not trained there, may drift
// as the tower changes), and the cells' positions, which no solo phase
// trains, are still not learned.
TEST_F(TrainerTest, SoloPhasesFollowEachOther) {
  const TrainExample e = TwoCellHeadsExample();
  TrainOptions o = Schedule(200);
  o.cell_classes = {5, 5};
  o.solo_cell_phases = {{1, 60}, {0, 60}};
  auto trainer = Trainer::Create(model(), o);
  ASSERT_TRUE(trainer.ok()) << trainer.status();
  const auto first = TrainAndReport(trainer->get(), {e}, 60);
  ASSERT_TRUE(first.has_value());
  EXPECT_EQ(first->second.cell_accuracy[1], 1.0);
  EXPECT_LT(first->second.cell_accuracy[0], 1.0);
  const auto second = TrainAndReport(trainer->get(), {e}, 60);
  ASSERT_TRUE(second.has_value());
  EXPECT_LT(first->second.cell_accuracy[0], second->second.cell_accuracy[0]);
  EXPECT_EQ(second->second.cell_accuracy[0], 1.0);
  EXPECT_GT(second->second.where_error, 0.1) << first->first.where_error;
}

// Two offset slots per cell (say a thing and the overlay on it): each cell
// learns where both are (here every cell of crop 0 says (0.25, -0.25) and
// (-0.5, 0.5); crop 1 has (0.1, 0.1) in the first slot and nothing in the
// second). Images that give only the first slot leave the second
// unsupervised. The second slot is learned from half the examples: after
// 100 steps it sometimes ended just over the bound (0.056), so 200.
TEST_F(TrainerTest, CellHeadsLearnTwoOffsetSlots) {
  TrainOptions o = Schedule(200);
  o.cell_classes = {5};
  o.cell_offset_items = 2;
  auto trainer = Trainer::Create(model(), o);
  ASSERT_TRUE(trainer.ok()) << trainer.status();
  TrainExample e = Example();
  e.images[0].cell_classes = at::ones({2, 2, 2, 1}, at::kLong);
  at::Tensor offsets = at::full({2, 2, 2, 4}, std::numeric_limits<float>::quiet_NaN());
  offsets[0] = at::tensor({0.25f, -0.25f, -0.5f, 0.5f}).view({1, 1, 4}).expand({2, 2, 4});
  offsets[1].narrow(2, 0, 2).fill_(0.1f);
  e.images[0].cell_offsets = offsets;
  TrainExample only_top = Example();
  only_top.images[0].cell_classes = at::ones({2, 2, 2, 1}, at::kLong);
  only_top.images[0].cell_offsets = offsets.narrow(3, 0, 2).clone();  // the same image, the same items on top
  const auto reports = TrainAndReport(trainer->get(), {e, only_top}, 200);
  ASSERT_TRUE(reports.has_value());
  const auto& [before, after] = *reports;
  ASSERT_EQ(after.offset_error.size(), 2u);
  EXPECT_GT(before.offset_error[1], 0.2);
  EXPECT_LT(after.offset_error[0], 0.05) << before.offset_error[0];
  EXPECT_LT(after.offset_error[1], 0.05) << before.offset_error[1];
}

// Per-item offset weights replace the common one (here 0): at 0 an item's
// slot is not learned (its read-out stays over 0.2 off) while the other slot,
// at 10, is. A list that does not match the items is refused.
TEST_F(TrainerTest, CellOffsetItemWeightsWeighEachSlot) {
  TrainOptions o = Schedule(150);
  o.cell_classes = {5};
  o.cell_offset_items = 2;
  o.cell_offset_item_weights = {10.0, 10.0, 1.0};
  auto refused = Trainer::Create(model(), o);
  ASSERT_FALSE(refused.ok());
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(refused.status().message().find("3 cell offset item weights for 2 offset items"), std::string::npos)
      << refused.status();
  o.cell_offset_item_weights = {10.0, -1.0};
  EXPECT_EQ(Trainer::Create(model(), o).status().code(), absl::StatusCode::kInvalidArgument);
  o.cell_offset_item_weights = {10.0, 0.0};
  o.cell_offset_weight = 0.0;
  auto trainer = Trainer::Create(model(), o);
  ASSERT_TRUE(trainer.ok()) << trainer.status();
  TrainExample e = Example();
  e.images[0].cell_classes = at::ones({2, 2, 2, 1}, at::kLong);
  at::Tensor offsets = at::full({2, 2, 2, 4}, 0.0f);
  offsets.select(3, 0).fill_(0.25f);
  offsets.select(3, 1).fill_(-0.25f);
  offsets.select(3, 2).fill_(-0.5f);
  offsets.select(3, 3).fill_(0.5f);
  e.images[0].cell_offsets = offsets;
  const auto reports = TrainAndReport(trainer->get(), {e}, 150);
  ASSERT_TRUE(reports.has_value());
  const auto& [before, after] = *reports;
  ASSERT_EQ(after.offset_error.size(), 2u);
  EXPECT_LT(after.offset_error[0], 0.05) << before.offset_error[0];
  EXPECT_GT(before.offset_error[1], 0.2);
  EXPECT_GT(after.offset_error[1], 0.2);
}

// With a position loss, what a supervised head reads carries where its item
// is: two examples whose prompts point at different cells get their own
// position back from head 0's output (a read-out that knows nothing is off
// by ~0.3).
TEST_F(TrainerTest, PointedHeadsLearnToSayWhereTheyLook) {
  TrainOptions o = Schedule(150);
  o.attention_loss_weight = 1.0;
  o.position_loss_weight = 10.0;
  auto trainer = Trainer::Create(model(), o);
  ASSERT_TRUE(trainer.ok()) << trainer.status();
  std::vector<TrainExample> batch;
  for (int i = 0; i < 2; ++i) {
    TrainExample e = Example();
    e.prompt_ids[1] = 17 + i;  // the instruction says which cell to look at
    TrainPointer a = PointAt(0, i, i, i);  // crop 0 top-left, or crop 1 bottom-right
    a.x = i == 0 ? 0.125 : 0.875;
    a.y = i == 0 ? 0.25 : 0.75;
    e.pointers = {a};
    batch.push_back(e);
  }
  const auto reports = TrainAndReport(trainer->get(), batch, 150);
  ASSERT_TRUE(reports.has_value());
  const auto& [before, after] = *reports;
  EXPECT_EQ(before.positions, 2);
  EXPECT_GT(before.position_error, 0.1);
  EXPECT_LT(after.position_error, 0.05) << before.position_error;
}

// The offset read-out learns what the final hidden state at chosen answer
// positions should say: two examples whose instruction (token 17 or 18)
// gives offsets (1.5, -0.5) at answer token 0 and (-1, 2) at token 3, or
// their negatives. An offset past the answer (token 9 of 4) is left out;
// without the loss nothing is read.
TEST_F(TrainerTest, OffsetReadOutLearnsFromTheFinalHiddenState) {
  std::vector<TrainExample> batch;
  for (int i = 0; i < 2; ++i) {
    TrainExample e = Example();
    e.prompt_ids[1] = 17 + i;
    const double sign = i == 0 ? 1 : -1;
    e.offsets = {{0, 1.5 * sign, -0.5 * sign}, {3, -1 * sign, 2 * sign}, {9, 5, 5}};
    batch.push_back(e);
  }
  {
    auto off = Trainer::Create(model(), Schedule(10));
    ASSERT_TRUE(off.ok()) << off.status();
    auto report = (*off)->Auxiliary(batch);
    ASSERT_TRUE(report.ok()) << report.status();
    EXPECT_EQ(report->offset_readout_values, 0);
  }
  TrainOptions o = Schedule(150);
  o.offset_loss_weight = 1.0;
  auto trainer = Trainer::Create(model(), o);
  ASSERT_TRUE(trainer.ok()) << trainer.status();
  const auto reports = TrainAndReport(trainer->get(), batch, 150);
  ASSERT_TRUE(reports.has_value());
  const auto& [before, after] = *reports;
  EXPECT_EQ(before.offset_readout_values, 8);  // 2 examples x 2 offsets x (x, y)
  EXPECT_GT(before.offset_readout_error, 0.5);
  EXPECT_LT(after.offset_readout_error, 0.1) << before.offset_readout_error;
}

// With a mark read-out, a pointed head's output learns to name the pointed
// thing's class: two examples look at different cells (the instruction
// tells which) whose things carry marks 3 and 7. A read-out without the
// attention loss it reads through is INVALID_ARGUMENT.
TEST_F(TrainerTest, PointedHeadsLearnToNameTheMarkThere) {
  TrainOptions o = Schedule(120);
  o.mark_loss_weight = 1.0;
  EXPECT_EQ(CheckTrainOptions(o, 2).code(), absl::StatusCode::kInvalidArgument);
  o.attention_loss_weight = 1.0;
  ASSERT_TRUE(CheckTrainOptions(o, 2).ok());
  o.seed = 7;
  auto trainer = Trainer::Create(model(), o);
  ASSERT_TRUE(trainer.ok()) << trainer.status();
  std::vector<TrainExample> batch = TwoInstructedPointers([](int i, TrainPointer* a) { a->mark = i == 0 ? 3 : 7; });
  // A pointer without a mark adds nothing to read.
  TrainExample unmarked = Example();
  unmarked.pointers = {PointAt(1, 1, 0, 1)};
  batch.push_back(unmarked);
  const auto reports = TrainAndReport(trainer->get(), batch, 120);
  ASSERT_TRUE(reports.has_value());
  const auto& [before, after] = *reports;
  EXPECT_EQ(before.marks, 2);
  EXPECT_EQ(after.marks, 2);
  EXPECT_LT(before.mark_accuracy, 0.6);
  EXPECT_GT(after.mark_accuracy, 0.99) << before.mark_accuracy;
}

// Look read-outs work the same way, one per entry of look_classes: two
// pointed things that look different (classes 5 and 9 of the first
// read-out, 2 and 0 of the second) are named from the head's output; a
// pointer with only the second class, or a class out of range, adds
// nothing to the first. Look read-outs need classes and the attention loss.
TEST_F(TrainerTest, PointedHeadsLearnToNameHowTheThingLooks) {
  TrainOptions o = Schedule(120);
  o.look_loss_weight = 1.0;
  o.attention_loss_weight = 1.0;
  EXPECT_EQ(CheckTrainOptions(o, 2).code(), absl::StatusCode::kInvalidArgument);  // no classes
  o.look_classes = {12, 0};
  EXPECT_EQ(CheckTrainOptions(o, 2).code(), absl::StatusCode::kInvalidArgument);  // an empty read-out
  o.look_classes = {12, 4};
  o.attention_loss_weight = 0;
  EXPECT_EQ(CheckTrainOptions(o, 2).code(), absl::StatusCode::kInvalidArgument);  // nothing to read through
  o.attention_loss_weight = 1.0;
  ASSERT_TRUE(CheckTrainOptions(o, 2).ok());
  o.seed = 7;
  auto trainer = Trainer::Create(model(), o);
  ASSERT_TRUE(trainer.ok()) << trainer.status();
  std::vector<TrainExample> batch = TwoInstructedPointers([](int i, TrainPointer* a) {
    a->looks = i == 0 ? std::vector<int64_t>{5, 2} : std::vector<int64_t>{9, 0};
  });
  TrainExample partly = Example();
  TrainPointer b = PointAt(1, 1, 0, 1);
  b.looks = {12, 3};  // 12 is not one of the first read-out's classes
  partly.pointers = {b};
  batch.push_back(partly);
  const auto reports = TrainAndReport(trainer->get(), batch, 120);
  ASSERT_TRUE(reports.has_value());
  const auto& [before, after] = *reports;
  ASSERT_EQ(after.looks, (std::vector<int>{2, 3}));
  EXPECT_EQ(before.looks, after.looks);
  EXPECT_EQ(after.marks, 0);
  for (int k = 0; k < 2; ++k) {
    EXPECT_LT(before.look_accuracy[k], 0.7) << k;
    EXPECT_GT(after.look_accuracy[k], 0.99) << k << ": " << before.look_accuracy[k];
  }
}

// The mark and look read-outs wait for the end of the solo phase: two
// trainers from the same weights, with and without them, take the same
// first (solo) step, and only the second adds the read-outs' loss.
TEST_F(TrainerTest, ClassReadOutsWaitForTheSoloPhase) {
  TrainExample e = Example();
  e.images[0].cell_classes = at::arange(1, 5, at::kLong).view({1, 2, 2, 1}).repeat({2, 1, 1, 1});
  e.images[0].cell_offsets = at::full({2, 2, 2, 2}, std::numeric_limits<float>::quiet_NaN());
  TrainPointer a = PointAt(0, 0, 1, 1);
  a.mark = 3;
  a.looks = {1};
  e.pointers = {a};
  std::vector<std::pair<double, double>> aux;  // per trainer: aux losses of steps 1 and 2
  for (const double class_loss : {1.0, 0.0}) {
    testing::TempDir dir;
    auto m = Tiny(dir.File("m"), "float32");
    ASSERT_NE(m, nullptr);
    TrainOptions o = Schedule(10);
    o.cell_classes = {5};
    o.solo_cell_phases = {{0, 1}};
    o.attention_loss_weight = 1.0;
    o.mark_loss_weight = class_loss;
    o.look_loss_weight = class_loss;
    o.look_classes = {10};
    o.seed = 11;
    auto trainer = Trainer::Create(m.get(), o);
    ASSERT_TRUE(trainer.ok()) << trainer.status();
    ASSERT_TRUE((*trainer)->Step({e}).ok());
    const double first = (*trainer)->last_aux_loss();
    ASSERT_TRUE((*trainer)->Step({e}).ok());
    aux.emplace_back(first, (*trainer)->last_aux_loss());
  }
  EXPECT_NEAR(aux[0].first, aux[1].first, 1e-5);
  // Ten classes from each of two fresh read-outs: cross-entropies near
  // log(10) each.
  EXPECT_GT(aux[0].second - aux[1].second, 3.0) << aux[0].second << " vs " << aux[1].second;
}

// Saving weights and optimizer state mid-run, then loading both into a new
// model and trainer, continues the run exactly.
TEST_F(TrainerTest, ResumesExactly) {
  TrainOptions o;
  o.learning_rate = 2e-3;
  o.warmup_steps = 2;
  o.total_steps = 8;
  // With training-only heads (the mark, look and offset read-outs), saved
  // and restored too.
  o.attention_loss_weight = 1.0;
  o.mark_loss_weight = 1.0;
  o.look_loss_weight = 1.0;
  o.look_classes = {6, 4};
  o.offset_loss_weight = 1.0;
  auto trainer = Trainer::Create(model(), o);
  ASSERT_TRUE(trainer.ok());
  TrainExample e = Example();
  TrainPointer p = PointAt(0, 0, 1, 1);
  p.mark = 3;
  p.looks = {5, 1};
  e.pointers = {p};
  e.offsets = {{1, 0.5, -1.0}};
  const std::vector<TrainExample> batch = {e};
  for (int i = 0; i < 3; ++i) ASSERT_TRUE((*trainer)->Step(batch).ok());
  const std::string out = dir_.File("ckpt");
  std::filesystem::create_directories(out);
  for (const char* f : {"config.json", "preprocessor_config.json"}) {
    std::filesystem::copy_file(dir_.File("m") + "/" + f, out + "/" + f);
  }
  ASSERT_TRUE(model()->SaveWeights(out + "/model.safetensors").ok());
  ASSERT_TRUE((*trainer)->SaveState(out + "/optimizer.pt").ok());
  std::vector<double> continued, continued_aux;
  for (int i = 0; i < 3; ++i) {
    continued.push_back(*(*trainer)->Step(batch));
    continued_aux.push_back((*trainer)->last_aux_loss());
  }

  LoadOptions lo;
  lo.dtype = "float32";
  lo.log_progress = false;
  auto m2 = MagmaModel::Load(out, lo);
  ASSERT_TRUE(m2.ok()) << m2.status();
  auto t2 = Trainer::Create(m2->get(), o);
  ASSERT_TRUE(t2.ok());
  ASSERT_TRUE((*t2)->RestoreState(out + "/optimizer.pt").ok());
  EXPECT_EQ((*t2)->step(), 3);
  for (int i = 0; i < 3; ++i) {
    auto loss = (*t2)->Step(batch);
    ASSERT_TRUE(loss.ok());
    EXPECT_NEAR(*loss, continued[i], 1e-6) << "step " << i;
    EXPECT_NEAR((*t2)->last_aux_loss(), continued_aux[i], 1e-5) << "step " << i;
  }
  EXPECT_EQ((*t2)->RestoreState(dir_.File("missing.pt")).code(), absl::StatusCode::kInvalidArgument);
}

TEST_F(TrainerTest, BatchedLossEqualsPerExampleLosses) {
  // A batch is one right-padded forward with one tower pass over all crops;
  // its loss must be the token-weighted mean of the examples' own losses.
  auto trainer = Trainer::Create(model(), TrainOptions{});
  ASSERT_TRUE(trainer.ok());
  TrainExample a = Example();
  TrainExample b;
  b.prompt_ids = {1, 511, 9, 10, 11, 12, 13, 511, 14};  // two images, longer
  b.images.push_back({at::randn({1, 3, 64, 64}), 1, 1});
  b.images.push_back({at::randn({2, 3, 64, 64}), 2, 1});
  b.target_ids = {7, 8};
  TrainExample c;
  c.prompt_ids = {1, 2, 3};  // no image
  c.target_ids = {5, 6, 7, 8, 9};
  auto la = (*trainer)->Loss({a}), lb = (*trainer)->Loss({b}), lc = (*trainer)->Loss({c});
  auto all = (*trainer)->Loss({a, b, c});
  ASSERT_TRUE(la.ok() && lb.ok() && lc.ok() && all.ok()) << all.status();
  const double expected = (*la * 4 + *lb * 2 + *lc * 5) / 11;
  EXPECT_NEAR(*all, expected, 1e-5);
}

TEST_F(TrainerTest, ForwardBatchMatchesForwardOfEachSequence) {
  at::manual_seed(3);
  at::Tensor x = at::randn({2, 9, model()->hidden_size()});
  auto batched = model()->ForwardBatch(x);
  ASSERT_TRUE(batched.ok()) << batched.status();
  for (int64_t b = 0; b < 2; ++b) {
    auto one = model()->Forward(x[b].narrow(0, 0, 5 + 4 * b));  // a prefix: right padding must not matter
    ASSERT_TRUE(one.ok());
    EXPECT_LE(((*batched)[b].narrow(0, 0, 5 + 4 * b) - *one).abs().max().item<double>(), 1e-4);
  }
  EXPECT_EQ(model()->ForwardBatch(at::randn({2, 3})).status().code(), absl::StatusCode::kInvalidArgument);
}

// bfloat16 products of the decoder and of the vision tower (with the
// projector) are switched apart: the float32 part computes exactly what it
// computes with no bfloat16 at all, the bfloat16 part differs a little.
TEST_F(TrainerTest, Bf16ProductsOfDecoderAndVisionAreSwitchedApart) {
  auto trainer = Trainer::Create(model(), Schedule(1));
  ASSERT_TRUE(trainer.ok()) << trainer.status();
  at::manual_seed(5);
  const at::Tensor crops = at::randn({1, 3, 64, 64});
  const at::Tensor x = at::randn({1, 6, model()->hidden_size()});
  auto run = [&](bool decoder, bool vision) {
    model()->SetBf16TrainingMatmuls(decoder, vision);
    auto features = model()->VisionFeatures(crops);
    auto hidden = model()->ForwardBatch(x);
    EXPECT_TRUE(features.ok() && hidden.ok());
    model()->SetBf16TrainingMatmuls(false, false);
    return std::make_pair(features.ok() ? features->detach() : at::Tensor(),
                          hidden.ok() ? hidden->detach() : at::Tensor());
  };
  const auto f32 = run(false, false);
  const auto decoder = run(true, false);
  const auto vision = run(false, true);
  ASSERT_TRUE(f32.first.defined() && decoder.first.defined() && vision.first.defined());
  auto differs = [](const at::Tensor& a, const at::Tensor& b) { return (a - b).abs().max().item<double>(); };
  const double scale = f32.first.abs().max().item<double>();
  EXPECT_EQ(differs(decoder.first, f32.first), 0.0);
  EXPECT_GT(differs(vision.first, f32.first), 0.0);
  EXPECT_LT(differs(vision.first, f32.first), 0.05 * scale);
  EXPECT_EQ(differs(vision.second, f32.second), 0.0);
  EXPECT_GT(differs(decoder.second, f32.second), 0.0);
  EXPECT_LT(differs(decoder.second, f32.second), 0.05 * f32.second.abs().max().item<double>());
}

TEST_F(TrainerTest, ForwardBatchSpansGivesTheLogitsOfItsSpansOnly) {
  at::manual_seed(4);
  at::Tensor x = at::randn({3, 8, model()->hidden_size()});
  auto all = model()->ForwardBatch(x);
  auto some = model()->ForwardBatchSpans(x, {{2, 3}, {0, 0}, {5, 3}});
  ASSERT_TRUE(all.ok() && some.ok()) << some.status();
  ASSERT_EQ(some->sizes(), (at::IntArrayRef{6, all->size(2)}));
  EXPECT_LE((some->narrow(0, 0, 3) - (*all)[0].narrow(0, 2, 3)).abs().max().item<double>(), 1e-5);
  EXPECT_LE((some->narrow(0, 3, 3) - (*all)[2].narrow(0, 5, 3)).abs().max().item<double>(), 1e-5);
  EXPECT_EQ(model()->ForwardBatchSpans(x, {{0, 1}, {0, 1}}).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(model()->ForwardBatchSpans(x, {{0, 1}, {6, 3}, {0, 1}}).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(model()->ForwardBatchSpans(x, {{-1, 1}, {0, 1}, {0, 1}}).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST_F(TrainerTest, NeedsAFloat32Model) {
  testing::TempDir dir;
  auto m = Tiny(dir.File("m"), "bfloat16");
  ASSERT_NE(m, nullptr);
  auto trainer = Trainer::Create(m.get(), {});
  EXPECT_EQ(trainer.status().code(), absl::StatusCode::kFailedPrecondition);
}

TEST_F(TrainerTest, LearningRateWarmsUpThenDecays) {
  TrainOptions o;
  o.learning_rate = 1e-3;
  o.warmup_steps = 3;
  o.total_steps = 13;
  auto trainer = Trainer::Create(model(), o);
  ASSERT_TRUE(trainer.ok());
  // Step 0 of 3 warm-up steps: peak * 1 / 4.
  EXPECT_NEAR((*trainer)->learning_rate(), 0.25e-3, 1e-12);
}

}  // namespace
}  // namespace magma::model
