#include "magma/train/synthetic_tasks.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <map>
#include <optional>
#include <regex>

#include <gtest/gtest.h>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "magma/agent/path_answer.h"
#include "magma/tokenizer/spm_trainer.h"
#include "testing/temp_dir.h"

namespace magma::train {
namespace {

class SyntheticTasksTest : public ::testing::Test {
 protected:
  void SetUp() override {
#if defined(__SANITIZE_ADDRESS__)
    GTEST_SKIP() << "SentencePiece needs dlopen(RTLD_DEEPBIND), unavailable under AddressSanitizer";
#endif
    // The tokenizer magma-train makes: SentencePiece with 256 reserved
    // action pieces at the top.
    tokenizer::SpmTrainOptions o;
    o.vocab_size = 600;
    o.reserved_pieces = 256;
    ASSERT_TRUE(tokenizer::TrainSentencePiece(SyntheticTasks::CorpusTexts(40), o, dir_.path()).ok());
    ctx_ = Context(64);
    ASSERT_NE(ctx_, nullptr);
    tasks_ = std::make_unique<SyntheticTasks>(ctx_.get(), worlds::UiWorldOptions{}, worlds::RobotWorldOptions{});
  }
  // A task context with that tokenizer and crops of `base` pixels, at most 2
  // crops per image (null, with a test failure, if it cannot be made). Sets
  // vocab_ and image_.
  std::unique_ptr<agent::TaskContext> Context(int base) {
    auto tok = tokenizer::LoadTokenizer(dir_.path());
    EXPECT_TRUE(tok.ok()) << tok.status();
    if (!tok.ok()) return nullptr;
    vocab_ = (*tok)->vocab_size();
    image_ = (*tok)->special_ids().image;
    vision::AnyresOptions anyres;
    anyres.base = base;
    anyres.max_crops = 2;
    auto ctx = agent::MakeTaskContext(std::shared_ptr<const tokenizer::Tokenizer>(std::move(*tok)), image_, false,
                                      anyres, std::nullopt);
    EXPECT_TRUE(ctx.ok()) << ctx.status();
    if (!ctx.ok()) return nullptr;
    return std::make_unique<agent::TaskContext>(*std::move(ctx));
  }
  testing::TempDir dir_;
  int32_t vocab_ = 0, image_ = 0;
  std::unique_ptr<agent::TaskContext> ctx_;
  std::unique_ptr<SyntheticTasks> tasks_;
};

TEST_F(SyntheticTasksTest, ClickTargetsTheInstructedMark) {
  for (uint64_t seed = 0; seed < 20; ++seed) {
    auto e = tasks_->Click(seed);
    ASSERT_TRUE(e.ok()) << e.status();
    EXPECT_EQ(e->example.images.size(), 1u);
    EXPECT_EQ(std::count(e->example.prompt_ids.begin(), e->example.prompt_ids.end(), image_), 1);
    // The target spells "Mark: N" then ends the turn.
    std::vector<int32_t> ids(e->example.target_ids.begin(), e->example.target_ids.end() - 1);
    EXPECT_EQ(ctx_->tokenizer->Decode(ids), e->target_text);
    EXPECT_EQ(e->example.target_ids.back(), ctx_->stop_ids.back());
    // The mark is the instructed widget's (marks count from 0 in box order).
    const auto screen = worlds::RenderScreen(seed);
    const auto instructions = worlds::Instructions(screen);
    EXPECT_EQ(e->target_text, "Mark: " + std::to_string(instructions[seed % instructions.size()].target));
  }
}

TEST_F(SyntheticTasksTest, ActTargetsAreSevenActionTokens) {
  for (uint64_t seed = 0; seed < 20; ++seed) {
    auto e = tasks_->Act(seed);
    ASSERT_TRUE(e.ok()) << e.status();
    ASSERT_EQ(e->example.target_ids.size(), 8u);
    for (int i = 0; i < 7; ++i) EXPECT_TRUE(ctx_->action_codec->IsActionToken(e->example.target_ids[i]));
    // Action tokens are the reserved top of the base vocabulary: text never encodes to them.
    EXPECT_GE(e->example.target_ids[0], vocab_ - 256);
  }
}

// Robot frames do not only show the expert's own episodes, which stay
// between the start, the block and the plate: the gripper is also found far
// from all three, where the expert's label still heads for the goal. The
// gripper's centre is read back from the cell targets (its class and offset
// in the 2x2 cells of a 64-pixel crop).
TEST_F(SyntheticTasksTest, ActFramesScatterTheGripperOverTheTable) {
  int frames = 0, away = 0;
  for (uint64_t seed = 0; seed < 200; ++seed) {
    auto e = tasks_->Act(seed);
    ASSERT_TRUE(e.ok()) << e.status();
    const auto& img = e->example.images[0];
    ASSERT_EQ(img.cell_classes.size(1), 2);
    std::optional<vision::NormPoint> gripper;
    for (int i = 0; i < 2; ++i) {
      for (int j = 0; j < 2; ++j) {
        const int64_t what = img.cell_classes[0][i][j][3].item<int64_t>();  // the overlay slot
        const float ox = img.cell_offsets[0][i][j][2].item<float>(), oy = img.cell_offsets[0][i][j][3].item<float>();
        if ((what == 61 || what == 62) && !std::isnan(ox)) gripper = vision::NormPoint{(j + 0.5 + ox) / 2, (i + 0.5 + oy) / 2};
      }
    }
    ASSERT_TRUE(gripper.has_value()) << seed;
    const worlds::RobotScene start = worlds::NewEpisode(seed, worlds::RobotWorldOptions{});
    double x1 = start.gripper.x, x2 = x1, y1 = start.gripper.y, y2 = y1;
    for (int k : {start.pick, start.place}) {
      x1 = std::min(x1, start.objects[k].center.x), x2 = std::max(x2, start.objects[k].center.x);
      y1 = std::min(y1, start.objects[k].center.y), y2 = std::max(y2, start.objects[k].center.y);
    }
    constexpr double kMargin = 0.15;
    ++frames;
    away += gripper->x < x1 - kMargin || gripper->x > x2 + kMargin || gripper->y < y1 - kMargin ||
            gripper->y > y2 + kMargin;
  }
  // A quarter of the frames put the gripper anywhere on the table (about
  // half of those land outside the box).
  EXPECT_GT(away, frames / 20) << away << " of " << frames;
}

// The robot frames' gripper and goal (from the pointers' position targets),
// whether the gripper is drawn closed (the overlay cell class) and whether
// the expert's gripper token opens it.
struct ActFrame {
  double gx, gy, goal_x, goal_y;
  bool closed, opens;
  std::string bins;
};

ActFrame ReadActFrame(const SyntheticExample& e, const agent::ActionCodec& codec) {
  const auto& ptrs = e.example.pointers;
  ActFrame f{ptrs.at(1).x, ptrs.at(1).y, ptrs.at(0).x, ptrs.at(0).y, false, false, e.target_text};
  const auto& img = e.example.images[0];
  f.closed = img.cell_classes.select(-1, 3).eq(62).any().item().toBool();  // the gripper closed
  f.opens = codec.BinCentre(codec.BinOfToken(e.example.target_ids[6])) > 0;
  return f;
}

// The default frame options are the stream the shipped model was trained on:
// the bins and positions of its first 100 frames, summed, as the training
// code of that model computed them.
TEST_F(SyntheticTasksTest, DefaultActFramesAreTheShippedModelsStream) {
  double sum = 0;
  int closed = 0;
  for (uint64_t seed = 0; seed < 100; ++seed) {
    auto e = tasks_->Act(seed);
    ASSERT_TRUE(e.ok()) << e.status();
    const ActFrame f = ReadActFrame(*e, *ctx_->action_codec);
    for (int i = 0; i < 7; ++i) sum += ctx_->action_codec->BinOfToken(e->example.target_ids[i]);
    sum += f.gx + f.gy + f.goal_x + f.goal_y;
    closed += f.closed;
  }
  EXPECT_NEAR(sum, 90827.972355277, 1e-6);
  EXPECT_EQ(closed, 52);
}

// The gripper pointer names the gripper's state for the look read-out, as
// the cells it is drawn in do.
TEST_F(SyntheticTasksTest, GripperPointerNamesTheGripperState) {
  int closed = 0;
  for (uint64_t seed = 0; seed < 100; ++seed) {
    auto e = tasks_->Act(seed);
    ASSERT_TRUE(e.ok()) << e.status();
    const ActFrame f = ReadActFrame(*e, *ctx_->action_codec);
    const auto& looks = e->example.pointers.at(1).looks;
    ASSERT_EQ(looks.size(), 1u);
    EXPECT_EQ(looks[0], SyntheticTasks::GripperLook(!f.closed)) << seed;
    EXPECT_LT(looks[0], SyntheticTasks::LookClasses()[0]);
    closed += f.closed;
  }
  EXPECT_EQ(closed, 52);  // both states occur (the stream's fingerprint above)
}

// More frames near the goal, and more of those closed on nothing: on the
// same seeds the extra near-goal quarter moves about a quarter of all frames
// there, and every frame whose closed gripper the expert opens near a
// block is one of those missed grasps.
TEST_F(SyntheticTasksTest, ActFrameOptionsPutFramesNearTheGoal) {
  const SyntheticTasks more(ctx_.get(), worlds::UiWorldOptions{}, worlds::RobotWorldOptions{}, {},
                            ActFrameOptions{/*near_goal_quarters=*/2, /*missed_grasp_quarters=*/2});
  const double reach = 2 * worlds::RobotWorldOptions{}.max_step + 1e-9;
  constexpr int kFrames = 400;
  int near[2] = {0, 0}, missed[2] = {0, 0};
  for (uint64_t seed = 0; seed < kFrames; ++seed) {
    for (int k = 0; k < 2; ++k) {
      auto e = (k == 0 ? *tasks_ : more).Act(seed);
      ASSERT_TRUE(e.ok()) << e.status();
      const ActFrame f = ReadActFrame(*e, *ctx_->action_codec);
      const bool is_near = std::abs(f.gx - f.goal_x) <= reach && std::abs(f.gy - f.goal_y) <= reach;
      near[k] += is_near;
      missed[k] += is_near && f.closed && f.opens;
    }
  }
  EXPECT_GT(near[1] - near[0], kFrames / 8) << near[0] << " -> " << near[1];
  EXPECT_LT(near[1] - near[0], kFrames * 3 / 8) << near[0] << " -> " << near[1];
  EXPECT_GE(missed[1], 2 * missed[0] + 1) << missed[0] << " -> " << missed[1];
  EXPECT_GT(missed[1], kFrames / 25) << missed[1];
}

// Frames where the expert grasps (an open gripper within its arrival
// distance of the block: it closes) are rare in the default stream; the
// arrival option puts a share of the near-goal frames there.
TEST_F(SyntheticTasksTest, ArrivalFramesShowTheExpertGrasping) {
  const SyntheticTasks arrive(ctx_.get(), worlds::UiWorldOptions{}, worlds::RobotWorldOptions{}, {},
                              ActFrameOptions{/*near_goal_quarters=*/1, /*missed_grasp_quarters=*/1,
                                              /*arrival_quarters=*/2});
  const double arrived = worlds::ArriveDistance();
  EXPECT_DOUBLE_EQ(arrived, 0.375 * 0.08);
  constexpr int kFrames = 400;
  int grasps[2] = {0, 0}, inside[2] = {0, 0};
  for (uint64_t seed = 0; seed < kFrames; ++seed) {
    for (int k = 0; k < 2; ++k) {
      auto e = (k == 0 ? *tasks_ : arrive).Act(seed);
      ASSERT_TRUE(e.ok()) << e.status();
      const ActFrame f = ReadActFrame(*e, *ctx_->action_codec);
      const bool in = std::hypot(f.gx - f.goal_x, f.gy - f.goal_y) <= arrived;
      inside[k] += in;
      grasps[k] += !f.closed && !f.opens;
      // Inside the arrival distance the expert does not move.
      if (in) {
        EXPECT_EQ(f.bins.substr(0, 8), "127 127 ") << seed << ": " << f.bins;
      }
    }
  }
  EXPECT_LT(grasps[0], kFrames / 25) << grasps[0];
  EXPECT_GT(grasps[1], 2 * grasps[0]) << grasps[0] << " -> " << grasps[1];
  EXPECT_GT(inside[1] - inside[0], kFrames / 16) << inside[0] << " -> " << inside[1];
}

// With the expert gripping on the move, frames near the block that the
// default expert labels "half a step on" (or "a step on") become "that move
// and close": grasps are three times as many (39 against 12 in 400
// frames), and most come with a move (35).
TEST_F(SyntheticTasksTest, GripOnTheMoveFramesCloseWhileMoving) {
  worlds::RobotWorldOptions moving;
  moving.grip_on_the_move = true;
  const SyntheticTasks on_the_move(ctx_.get(), worlds::UiWorldOptions{}, moving);
  constexpr int kFrames = 400;
  int grasps[2] = {0, 0}, moving_grasps[2] = {0, 0};
  for (uint64_t seed = 0; seed < kFrames; ++seed) {
    for (int k = 0; k < 2; ++k) {
      auto e = (k == 0 ? *tasks_ : on_the_move).Act(seed);
      ASSERT_TRUE(e.ok()) << e.status();
      const ActFrame f = ReadActFrame(*e, *ctx_->action_codec);
      if (f.closed || f.opens) continue;
      ++grasps[k];
      moving_grasps[k] += f.bins.substr(0, 8) != "127 127 ";
    }
  }
  EXPECT_EQ(moving_grasps[0], 0);
  EXPECT_GT(grasps[1], 3 * grasps[0]) << grasps[0] << " -> " << grasps[1];
  EXPECT_GT(2 * moving_grasps[1], grasps[1]) << moving_grasps[1] << " of " << grasps[1];
}

// A wider release disc (release_steps) turns carrying frames that the
// default expert labels "move on, closed" into "that move and open"; every
// release ends within the disc, on the plate.
TEST_F(SyntheticTasksTest, ReleaseStepsWidenWhereCarryingFramesOpen) {
  worlds::RobotWorldOptions narrow, wide;
  narrow.grip_on_the_move = wide.grip_on_the_move = true;
  wide.release_steps = 0.6;
  const SyntheticTasks tasks[2] = {SyntheticTasks(ctx_.get(), worlds::UiWorldOptions{}, narrow),
                                   SyntheticTasks(ctx_.get(), worlds::UiWorldOptions{}, wide)};
  const auto& codec = *ctx_->action_codec;
  constexpr int kFrames = 400;
  int releases[2] = {0, 0};
  for (uint64_t seed = 0; seed < kFrames; ++seed) {
    for (int k = 0; k < 2; ++k) {
      auto e = tasks[k].Act(seed);
      ASSERT_TRUE(e.ok()) << e.status();
      if (!e->carrying) continue;
      const ActFrame f = ReadActFrame(*e, codec);
      if (!f.opens) continue;
      ++releases[k];
      const double ex = f.gx + 0.08 * codec.BinCentre(codec.BinOfToken(e->example.target_ids[0]));
      const double ey = f.gy + 0.08 * codec.BinCentre(codec.BinOfToken(e->example.target_ids[1]));
      // Bin centres are within 1/128 of the move.
      EXPECT_LE(std::hypot(ex - f.goal_x, ey - f.goal_y), (k == 0 ? 0.375 : 0.6) * 0.08 + 2 * 0.08 / 128)
          << seed << ": " << f.bins;
    }
  }
  EXPECT_GT(releases[1], releases[0] + releases[0] / 4) << releases[0] << " -> " << releases[1];
}

// The offset read-out's target is where the goal is from the gripper, in
// steps of 0.08 and within two per axis, at the x, y and gripper tokens;
// away from the goal the expert's move per axis is that offset rounded to a
// half step (a quarter step with move_divisions 4) and clamped to one.
TEST_F(SyntheticTasksTest, ActFramesCarryTheGoalOffsetInSteps) {
  for (int divisions : {2, 4}) {
    worlds::RobotWorldOptions robot;
    robot.move_divisions = divisions;
    const SyntheticTasks tasks(ctx_.get(), worlds::UiWorldOptions{}, robot);
    int moves = 0, clamped = 0, odd_quarters = 0;
    for (uint64_t seed = 0; seed < 200; ++seed) {
      auto e = tasks.Act(seed);
      ASSERT_TRUE(e.ok()) << e.status();
      const ActFrame f = ReadActFrame(*e, *ctx_->action_codec);
      const auto& offsets = e->example.offsets;
      ASSERT_EQ(offsets.size(), 3u) << seed;
      // The six normalised dimensions are ordered bins; the gripper is not.
      EXPECT_EQ(e->example.ordered_targets, std::vector<int64_t>({0, 1, 2, 3, 4, 5})) << seed;
      const double sx = std::clamp((f.goal_x - f.gx) / 0.08, -2.0, 2.0);
      const double sy = std::clamp((f.goal_y - f.gy) / 0.08, -2.0, 2.0);
      for (size_t k = 0; k < offsets.size(); ++k) {
        EXPECT_EQ(offsets[k].token, std::vector<int64_t>({0, 1, 6})[k]) << seed;
        EXPECT_NEAR(offsets[k].x, sx, 1e-9) << seed;
        EXPECT_NEAR(offsets[k].y, sy, 1e-9) << seed;
      }
      clamped += std::abs(sx) == 2 || std::abs(sy) == 2;
      if (std::hypot(f.goal_x - f.gx, f.goal_y - f.gy) <= worlds::ArriveDistance() + 1e-9) continue;
      ++moves;
      for (int axis = 0; axis < 2; ++axis) {
        const double want = std::clamp(std::round(divisions * (axis == 0 ? sx : sy)) / divisions, -1.0, 1.0);
        const double got = ctx_->action_codec->BinCentre(ctx_->action_codec->BinOfToken(e->example.target_ids[axis]));
        EXPECT_NEAR(got, want, 0.01) << seed << " axis " << axis << " divisions " << divisions;
        // -3/4, -1/4, 1/4 or 3/4 of a step.
        odd_quarters += std::abs(std::abs(got) - 0.25) < 0.01 || std::abs(std::abs(got) - 0.75) < 0.01;
      }
    }
    EXPECT_GT(moves, 150);
    EXPECT_GT(clamped, 20);
    if (divisions == 2) {
      EXPECT_EQ(odd_quarters, 0);
    } else {
      EXPECT_GT(odd_quarters, 20);
    }
  }
}

// A frame carries the block when the goal pointer's naming words are the
// plate's colour in "put the <colour> block on the <colour> plate", with the
// gripper closed; otherwise they are the block's.
TEST_F(SyntheticTasksTest, CarryingFramesHeadForThePlate) {
  int carrying = 0, going = 0;
  for (uint64_t seed = 0; seed < 200; ++seed) {
    auto e = tasks_->Act(seed);
    ASSERT_TRUE(e.ok()) << e.status();
    const ActFrame f = ReadActFrame(*e, *ctx_->action_codec);
    const auto& prompt = e->example.prompt_ids;
    std::vector<int32_t> words;
    for (int64_t i : e->example.pointers.at(0).words) words.push_back(static_cast<int32_t>(prompt.at(i)));
    const std::string colour(absl::StripAsciiWhitespace(ctx_->tokenizer->Decode(words)));
    ASSERT_FALSE(colour.empty()) << seed;
    const std::string text = ctx_->tokenizer->Decode(std::vector<int32_t>(prompt.begin(), prompt.end()));
    if (e->carrying) {
      ++carrying;
      EXPECT_TRUE(f.closed) << seed;
      EXPECT_NE(text.find("on the " + colour + " plate"), std::string::npos) << seed << ": " << colour;
    } else {
      ++going;
      EXPECT_NE(text.find("put the " + colour + " block"), std::string::npos) << seed << ": " << colour;
    }
  }
  EXPECT_GT(carrying, 20);
  EXPECT_GT(going, 20);
}

// The tower's cell targets, checked on a case computed by hand: a 256x256
// tabletop on a 1x1 grid of 64-pixel crops has 2x2 tower cells of 128
// original pixels each.
TEST_F(SyntheticTasksTest, CellTargetsMarkWhatIsWhere) {
  int outside = 0;  // cells whose item's centre lies outside them
  int both = 0;     // cells holding a thing and the gripper
  for (uint64_t seed = 0; seed < 40; ++seed) {
    auto e = tasks_->Path(seed);
    ASSERT_TRUE(e.ok());
    const auto& img = e->example.images[0];
    ASSERT_EQ(img.rows, 1);
    ASSERT_EQ(img.cols, 1);
    ASSERT_TRUE(img.cell_classes.defined());
    ASSERT_EQ(img.cell_classes.sizes(), (std::vector<int64_t>{1, 2, 2, 4}));
    ASSERT_EQ(img.cell_offsets.sizes(), (std::vector<int64_t>{1, 2, 2, 4}));
    const auto scene = worlds::NewEpisode(seed);
    // The gripper starts at (0.5, 0.9) = pixel (128, 230.4): cell (1, 1),
    // open (class 61: 1 + 6 UI looks x 8 colours + 6 blocks + 6 plates),
    // centre 0.5 cell left of and 0.3 cell below the cell's; it is an
    // overlay, in the second slot.
    EXPECT_EQ(img.cell_classes[0][1][1][3].item<int64_t>(), 61);
    EXPECT_NEAR(img.cell_offsets[0][1][1][2].item<float>(), -0.5, 1e-5);
    EXPECT_NEAR(img.cell_offsets[0][1][1][3].item<float>(), 0.3, 1e-5);
    // No marks and no labels on a tabletop.
    EXPECT_EQ(img.cell_classes.select(3, 1).max().item<int64_t>(), 0);
    EXPECT_EQ(img.cell_classes.select(3, 2).max().item<int64_t>(), 0);
    // Every class is within its head.
    for (int k = 0; k < 4; ++k) {
      EXPECT_LT(img.cell_classes.select(3, k).max().item<int64_t>(), SyntheticTasks::CellClasses()[k]);
    }
    for (int i = 0; i < 2; ++i) {
      for (int j = 0; j < 2; ++j) {
        // The thing slot: its class and offset name one block (class 49 +
        // colour) or plate (55 + colour) of the scene, also in cells that
        // only lie under its box or hold the gripper too.
        const int64_t what = img.cell_classes[0][i][j][0].item<int64_t>();
        const float ox = img.cell_offsets[0][i][j][0].item<float>(), oy = img.cell_offsets[0][i][j][1].item<float>();
        EXPECT_EQ(what == 0, std::isnan(ox)) << seed;
        if (what != 0) {
          const double x = (j + 0.5 + ox) / 2, y = (i + 0.5 + oy) / 2;
          int matches = 0;
          for (const auto& o : scene.objects) {
            const int colour = static_cast<int>(std::find(worlds::TableColors().begin(), worlds::TableColors().end(),
                                                          o.color) - worlds::TableColors().begin());
            matches += std::hypot(x - o.center.x, y - o.center.y) < 1e-4 && what == (o.kind == "block" ? 49 : 55) + colour;
          }
          EXPECT_EQ(matches, 1) << seed << ": cell " << i << "," << j << " has " << what << " at " << x << "," << y;
        }
        // The overlay slot: only the gripper (61 open), at its centre.
        const int64_t over = img.cell_classes[0][i][j][3].item<int64_t>();
        const float gx = img.cell_offsets[0][i][j][2].item<float>(), gy = img.cell_offsets[0][i][j][3].item<float>();
        EXPECT_EQ(over == 0, std::isnan(gx)) << seed;
        if (over == 0) continue;
        EXPECT_EQ(over, 61);
        EXPECT_NEAR((j + 0.5 + gx) / 2, scene.gripper.x, 1e-4);
        EXPECT_NEAR((i + 0.5 + gy) / 2, scene.gripper.y, 1e-4);
        both += what != 0;
      }
    }
  }
  // On screens (two 64-pixel crops of 2x2 cells: cells of 112 original
  // pixels) a wide widget also lies under cells that do not hold its centre;
  // those cells point at its centre too.
  for (uint64_t seed = 0; seed < 20; ++seed) {
    auto e = tasks_->Click(seed);
    ASSERT_TRUE(e.ok());
    const auto screen = worlds::RenderScreen(seed);
    const auto& img = e->example.images[0];
    ASSERT_EQ(img.cols, 2);
    for (int q = 0; q < 2; ++q) {
      for (int i = 0; i < 2; ++i) {
        for (int j = 0; j < 2; ++j) {
          const float ox = img.cell_offsets[q][i][j][0].item<float>(), oy = img.cell_offsets[q][i][j][1].item<float>();
          if (std::isnan(ox) || (std::abs(ox) <= 0.5 && std::abs(oy) <= 0.5)) continue;
          const double x = (2 * q + j + 0.5 + ox) * 112, y = (i + 0.5 + oy) * 112;
          for (const auto& w : screen.widgets) {
            outside += std::hypot(x - (w.box.x1 + w.box.x2) / 2, y - (w.box.y1 + w.box.y2) / 2) < 1e-3;
          }
        }
      }
    }
  }
  EXPECT_GT(outside, 0);
  EXPECT_GT(both, 0);
  // On a marked screen some cell carries a mark id, and the target widget's
  // centre cell carries its mark.
  auto click = tasks_->Click(3);
  ASSERT_TRUE(click.ok());
  EXPECT_GT(click->example.images[0].cell_classes.select(3, 1).max().item<int64_t>(), 0);
  // Its mark labels are overlays (class 63), in the second slot.
  EXPECT_EQ(click->example.images[0].cell_classes.select(3, 3).max().item<int64_t>(), 63);
  // Widget cells without a label carry their widget's mark too; without
  // marks on things, only label cells carry one.
  const SyntheticTasks labels_only(ctx_.get(), worlds::UiWorldOptions{}, worlds::RobotWorldOptions{},
                                   {/*marks_on_things=*/false});
  auto bare = labels_only.Click(3);
  ASSERT_TRUE(bare.ok());
  for (const auto* e : {&*click, &*bare}) {
    const at::Tensor classes = e->example.images[0].cell_classes;
    const at::Tensor marked = classes.select(3, 1).gt(0), label = classes.select(3, 3).eq(63);
    EXPECT_GT(label.sum().item<int64_t>(), 0);
    EXPECT_TRUE(marked.masked_select(label).all().item<bool>());  // every label cell names its mark
    EXPECT_EQ(marked.logical_and(label.logical_not()).any().item<bool>(), e == &*click);
  }
}

// With CellTargetOptions::gripper_from_cells every cell of a tabletop frame
// says where the gripper is from its centre, in cells, within 2 per axis.
// The start of an episode puts the gripper at (0.5, 0.9) = pixel (128,
// 230.4) of the 256x256 frame.
TEST_F(SyntheticTasksTest, CellTargetsSeeTheGripperFromEveryCell) {
  CellTargetOptions cells;
  cells.gripper_from_cells = true;
  EXPECT_EQ(SyntheticTasks::CellOffsetItems(CellTargetOptions{}), 2);
  EXPECT_EQ(SyntheticTasks::CellOffsetItems(cells), 3);
  const SyntheticTasks with(ctx_.get(), worlds::UiWorldOptions{}, worlds::RobotWorldOptions{}, cells);
  auto e = with.Path(3), plain = tasks_->Path(3);
  ASSERT_TRUE(e.ok() && plain.ok());
  const at::Tensor o = e->example.images[0].cell_offsets;
  ASSERT_EQ(o.sizes(), (std::vector<int64_t>{1, 2, 2, 6}));
  // 2x2 cells of 128 pixels, centres at 64 and 192.
  const float expected[2][2][2] = {{{0.5f, 1.3f}, {-0.5f, 1.3f}}, {{0.5f, 0.3f}, {-0.5f, 0.3f}}};
  for (int i = 0; i < 2; ++i) {
    for (int j = 0; j < 2; ++j) {
      EXPECT_NEAR(o[0][i][j][4].item<float>(), expected[i][j][0], 1e-5) << i << "," << j;
      EXPECT_NEAR(o[0][i][j][5].item<float>(), expected[i][j][1], 1e-5) << i << "," << j;
    }
  }
  // The thing and overlay slots are those of the stream without the option.
  EXPECT_TRUE(o.narrow(3, 0, 4).allclose(plain->example.images[0].cell_offsets, 1e-6, 1e-6, true));
  // Robot frames carry the slot; screens, with no gripper, do not.
  auto act = with.Act(3);
  ASSERT_TRUE(act.ok());
  EXPECT_EQ(act->example.images[0].cell_offsets.size(3), 6);
  EXPECT_FALSE(act->example.images[0].cell_offsets.select(3, 4).isnan().any().item<bool>());
  auto click = with.Click(3);
  ASSERT_TRUE(click.ok());
  EXPECT_EQ(click->example.images[0].cell_offsets.size(3), 4);

  // 224-pixel crops: 7x7 cells of 256/7 pixels; far cells are clamped.
  const auto ctx = Context(224);
  ASSERT_NE(ctx, nullptr);
  const SyntheticTasks wide(ctx.get(), worlds::UiWorldOptions{}, worlds::RobotWorldOptions{}, cells);
  auto big = wide.Path(3);
  ASSERT_TRUE(big.ok());
  const at::Tensor b = big->example.images[0].cell_offsets;
  ASSERT_EQ(b.sizes(), (std::vector<int64_t>{1, 7, 7, 6}));
  EXPECT_NEAR(b[0][0][0][4].item<float>(), 2.0, 1e-5);   // 3.0 cells to the right
  EXPECT_NEAR(b[0][0][0][5].item<float>(), 2.0, 1e-5);   // 5.8 cells down
  EXPECT_NEAR(b[0][6][6][4].item<float>(), -2.0, 1e-5);  // 3.0 cells to the left
  EXPECT_NEAR(b[0][6][6][5].item<float>(), -0.2, 1e-4);
  EXPECT_NEAR(b[0][6][3][4].item<float>(), 0.0, 1e-4);  // the gripper's column
  EXPECT_NEAR(b[0][5][3][5].item<float>(), 0.8, 1e-4);
}

// With labels on text, the label head names a label only in the cells its
// text is drawn in: a subset of the cells that name it otherwise, the rest
// of the widget's cells left out (-1), and almost every label still named
// somewhere (on this coarse test grid another widget can own the cell that
// holds a text's middle).
TEST_F(SyntheticTasksTest, LabelsOnTextNameTheLabelWhereItIsDrawn) {
  const SyntheticTasks on_text(ctx_.get(), worlds::UiWorldOptions{}, worlds::RobotWorldOptions{},
                               {/*marks_on_things=*/true, /*labels_on_text=*/true});
  int64_t named = 0, kept = 0, labels = 0, labels_kept = 0;
  for (uint64_t seed = 0; seed < 20; ++seed) {
    for (bool click : {true, false}) {
      auto a = click ? tasks_->Click(seed) : tasks_->Question(seed);
      auto b = click ? on_text.Click(seed) : on_text.Question(seed);
      ASSERT_TRUE(a.ok() && b.ok());
      const at::Tensor la = a->example.images[0].cell_classes.select(3, SyntheticTasks::kLabelCellHead);
      const at::Tensor lb = b->example.images[0].cell_classes.select(3, SyntheticTasks::kLabelCellHead);
      EXPECT_FALSE(lb.gt(0).logical_and(la.ne(lb)).any().item<bool>()) << seed;
      EXPECT_TRUE(lb.eq(-1).eq(la.gt(0).logical_and(lb.le(0))).all().item<bool>()) << seed;
      EXPECT_TRUE(lb.eq(0).eq(la.eq(0)).all().item<bool>()) << seed;
      // The other heads do not change.
      for (int k : {0, 1, 3}) {
        EXPECT_TRUE(
            a->example.images[0].cell_classes.select(3, k).equal(b->example.images[0].cell_classes.select(3, k)));
      }
      named += la.gt(0).sum().item<int64_t>();
      kept += lb.gt(0).sum().item<int64_t>();
      for (int64_t label = 1; label <= static_cast<int64_t>(worlds::UiLabels().size()); ++label) {
        if (!la.eq(label).any().item<bool>()) continue;
        ++labels;
        labels_kept += lb.eq(label).any().item<bool>();
      }
    }
  }
  EXPECT_GT(kept, 0);
  EXPECT_LT(kept, named);
  EXPECT_GT(labels, 40);
  EXPECT_GE(labels_kept, labels * 3 / 4);
}

// Path answers carry two decimals, as HAMSTER writes them: seed 9's expert
// path rounded by hand from the scene's centres.
TEST_F(SyntheticTasksTest, PathTargetsHaveTwoDecimals) {
  for (uint64_t seed = 0; seed < 20; ++seed) {
    auto e = tasks_->Path(seed);
    ASSERT_TRUE(e.ok()) << e.status();
    auto parsed = agent::ParsePathAnswer(e->target_text);
    ASSERT_TRUE(parsed.ok()) << parsed.status();
    const auto truth = worlds::ExpertPath(worlds::NewEpisode(seed));
    ASSERT_EQ(parsed->size(), truth.size());
    for (size_t i = 0; i < truth.size(); ++i) {
      for (auto [got, want] : {std::pair{(*parsed)[i].point.x, truth[i].point.x},
                               std::pair{(*parsed)[i].point.y, truth[i].point.y}}) {
        EXPECT_NEAR(got * 100, std::round(got * 100), 1e-9) << e->target_text;
        EXPECT_LE(std::abs(got - want), 0.005 + 1e-12) << e->target_text;
      }
    }
  }
  auto e = tasks_->Path(9);
  ASSERT_TRUE(e.ok());
  const auto s = worlds::NewEpisode(9);
  auto two = [](double v) {
    char buf[16];
    std::snprintf(buf, sizeof(buf), "%.2f", v);
    std::string t = buf;
    while (t.back() == '0') t.pop_back();
    if (t.back() == '.') t.pop_back();
    return t;
  };
  const auto& block = s.objects[s.pick].center;
  const auto& plate = s.objects[s.place].center;
  // The gripper starts open at (0.5, 0.9): the answer's state before the
  // first point is closed, so an open tag follows it.
  EXPECT_EQ(e->target_text, "<ans>[(0.5, 0.9), <action>Open Gripper</action>, (" + two(block.x) + ", " + two(block.y) +
                                "), <action>Close Gripper</action>, (" + two(plate.x) + ", " + two(plate.y) +
                                "), <action>Open Gripper</action>]</ans>");
}

// Attention pointers: while writing waypoint k of a path, head 0 looks at
// the gripper, the block, the plate; an action looks at the goal (head 0)
// and the gripper (head 2). On the 2x2-cell test grid the gripper's start,
// pixel (128, 230.4), is cell (1, 1).
TEST_F(SyntheticTasksTest, PointersLookAtWhatTheAnswerIsAbout) {
  for (uint64_t seed = 0; seed < 10; ++seed) {
    auto e = tasks_->Path(seed);
    ASSERT_TRUE(e.ok());
    const auto& ptrs = e->example.pointers;
    ASSERT_EQ(ptrs.size(), 3u);
    int64_t end = 0;
    for (const auto& p : ptrs) {
      EXPECT_EQ(p.head, 0);
      EXPECT_GE(p.first, end);  // in order, not overlapping
      end = p.first + p.count;
      std::vector<int32_t> ids(e->example.target_ids.begin() + p.first, e->example.target_ids.begin() + end);
      const std::string text = ctx_->tokenizer->Decode(ids);
      EXPECT_NE(text.find('('), std::string::npos) << text;
      EXPECT_NE(text.find(')'), std::string::npos) << text;
      EXPECT_EQ(text.find("Gripper"), std::string::npos) << text;
      ASSERT_EQ(p.cells.size(), 1u);
      EXPECT_GT(p.cells[0].sum().item<int64_t>(), 0);
    }
    EXPECT_TRUE(ptrs[0].cells[0][0][1][1].item<bool>());
    EXPECT_FALSE(ptrs[0].cells[0][0][0][0].item<bool>());

    auto act = tasks_->Act(seed);
    ASSERT_TRUE(act.ok());
    ASSERT_EQ(act->example.pointers.size(), 2u);
    EXPECT_EQ(act->example.pointers[0].head, 0);
    EXPECT_EQ(act->example.pointers[1].head, 2);  // the other key/value group
    EXPECT_EQ(act->example.pointers[1].count, -1);
  }
  int clicks = 0;
  for (uint64_t seed = 0; seed < 10; ++seed) {
    auto click = tasks_->Click(seed);
    if (!click.ok()) continue;  // a screen with no unambiguous instruction
    ++clicks;
    ASSERT_EQ(click->example.pointers.size(), 1u);
    EXPECT_GT(click->example.pointers[0].cells[0].sum().item<int64_t>(), 0);
    // The click pointer's mark is the number the answer names.
    EXPECT_EQ(absl::StrCat("Mark: ", click->example.pointers[0].mark), click->target_text);
    // Other tasks, questions about marks too, have no mark to read.
    for (auto other : {tasks_->Act(seed), tasks_->Path(seed), tasks_->Question(seed)}) {
      if (!other.ok()) continue;
      for (const auto& p : other->example.pointers) EXPECT_EQ(p.mark, -1);
    }
  }
  EXPECT_GT(clicks, 5);
}

// With QuestionOptions::absent_to_start, a question about nothing on the
// screen ("No.", or no buttons to count) points its head at the prompt's
// first token, which is text (not an image cell), and names the words that
// say what is asked about; without it such a question has no pointer.
// Questions about something there point at it either way.
TEST_F(SyntheticTasksTest, AbsentThingsPointAtThePromptsFirstToken) {
  QuestionOptions on;
  on.absent_to_start = true;
  const SyntheticTasks sinking(ctx_.get(), worlds::UiWorldOptions{}, worlds::RobotWorldOptions{}, {}, {}, on);
  int absent = 0, present = 0;
  for (uint64_t seed = 0; seed < 120; ++seed) {
    auto plain = tasks_->Question(seed);
    auto q = sinking.Question(seed);
    ASSERT_TRUE(plain.ok() && q.ok());
    ASSERT_EQ(q->target_text, plain->target_text);
    EXPECT_NE(q->example.prompt_ids[0], image_);
    if (plain->example.pointers.empty()) {
      ++absent;
      if (q->target_text != "No.") {
        EXPECT_EQ(q->target_text, "0");
      }
      ASSERT_EQ(q->example.pointers.size(), 1u);
      const auto& p = q->example.pointers[0];
      EXPECT_EQ(p.sink, (std::vector<int64_t>{0}));
      EXPECT_TRUE(p.cells.empty());
      EXPECT_EQ(p.head, 0);
      EXPECT_FALSE(p.words.empty());
    } else {
      ++present;
      EXPECT_NE(q->target_text, "No.") << "seed " << seed << ": a pointer for an absent thing";
      ASSERT_EQ(q->example.pointers.size(), plain->example.pointers.size());
      EXPECT_TRUE(q->example.pointers[0].sink.empty());
      EXPECT_TRUE(q->example.pointers[0].cells[0].equal(plain->example.pointers[0].cells[0]));
    }
  }
  EXPECT_GT(absent, 5);
  EXPECT_GT(present, 60);
}

// A question whose answer says how one widget looks (its colour, what is at
// its mark) gives its pointer the widget's look classes: kind, shape and
// colour as the "what" cell head names them (1 + look x 8 + colour), and
// its label (0: none), which the cell heads name in the cells it looks at.
// Other questions and tasks carry none.
TEST_F(SyntheticTasksTest, QuestionPointersKnowHowTheirWidgetLooks) {
  EXPECT_EQ(SyntheticTasks::LookClasses(),
            (std::vector<int64_t>{SyntheticTasks::CellClasses()[0], SyntheticTasks::CellClasses()[2]}));
  const auto& colors = worlds::UiColors();
  const auto& labels = worlds::UiLabels();
  int colour_questions = 0, mark_questions = 0, labelled = 0, shown = 0, shown_label = 0;
  for (uint64_t seed = 0; seed < 80; ++seed) {
    auto q = tasks_->Question(seed);
    ASSERT_TRUE(q.ok());
    std::vector<int32_t> prompt(q->example.prompt_ids.begin(), q->example.prompt_ids.end());
    const std::string question = ctx_->tokenizer->Decode(prompt);
    const bool colour = question.find("What color is") != std::string::npos;
    const bool mark = question.find("What is at mark") != std::string::npos;
    if (!colour && !mark) {
      // About nothing ("Is there...?" "No."), or about several things.
      for (const auto& p : q->example.pointers) EXPECT_TRUE(p.looks.empty()) << question;
      continue;
    }
    ASSERT_EQ(q->example.pointers.size(), 1u) << question;
    const auto& p = q->example.pointers[0];
    colour_questions += colour;
    mark_questions += mark;
    ASSERT_EQ(p.looks.size(), 2u) << question;
    // The label named in the question (colour) or the answer (mark).
    const std::string named = " " + (colour ? question : q->target_text) + " ";
    int64_t label = 0;
    for (size_t i = 0; i < labels.size(); ++i) {
      if (named.find(" " + labels[i] + " ") != std::string::npos) label = 1 + static_cast<int64_t>(i);
    }
    labelled += label > 0;
    EXPECT_EQ(p.looks[1], label) << named;
    ASSERT_GE(p.looks[0], 1);
    const std::string& colour_name = colors[(p.looks[0] - 1) % 8].first;
    if (colour) {
      EXPECT_EQ(colour_name, q->target_text);
    }
    if (mark && label == 0) {
      EXPECT_NE(q->target_text.find(" " + colour_name + " "), std::string::npos);
    }
    // The cells the pointer looks at mostly show that thing and that label
    // (on this coarse test grid a cell shows one thing, sometimes a
    // neighbour).
    const auto& img = q->example.images[0];
    const at::Tensor on = p.cells[0];
    ASSERT_GT(on.sum().item<int64_t>(), 0);
    shown += img.cell_classes.select(3, 0).masked_select(on).eq(p.looks[0]).any().item<bool>();
    if (label > 0) shown_label += img.cell_classes.select(3, 2).masked_select(on).eq(label).any().item<bool>();
  }
  EXPECT_GT(shown, (colour_questions + mark_questions) / 2);
  EXPECT_GT(shown_label, labelled / 2);
  EXPECT_GT(colour_questions, 3);
  EXPECT_GT(mark_questions, 3);
  EXPECT_GT(labelled, 3);
  for (uint64_t seed = 0; seed < 10; ++seed) {
    for (auto other : {tasks_->Click(seed), tasks_->Act(seed), tasks_->Path(seed)}) {
      if (!other.ok()) continue;
      // Only the robot's gripper pointer has one (its state; see
      // GripperPointerNamesTheGripperState).
      for (const auto& p : other->example.pointers)
        EXPECT_EQ(p.looks.empty(), other->kind != TaskKind::kAct || p.head != 2);
    }
  }
}

// Pointers also name the prompt words of what they look for: the goal's
// colour in an act prompt (a table has one thing per colour), the block's and
// then the plate's colour while a path is written (not the gripper's start),
// the words of a click instruction that pick the element, the thing a
// question asks about.
TEST_F(SyntheticTasksTest, PointersNameTheirWords) {
  auto words = [&](const model::TrainExample& e, const model::TrainPointer& p) {
    std::vector<int32_t> ids;
    for (int64_t i : p.words) ids.push_back(static_cast<int32_t>(e.prompt_ids[i]));
    std::string text = ctx_->tokenizer->Decode(ids);
    while (!text.empty() && text.front() == ' ') text.erase(0, 1);
    return text;
  };
  const std::regex color("red|green|blue|yellow|purple|orange");
  for (uint64_t seed = 0; seed < 10; ++seed) {
    auto path = tasks_->Path(seed);
    ASSERT_TRUE(path.ok());
    const auto& ptrs = path->example.pointers;
    ASSERT_EQ(ptrs.size(), 3u);
    EXPECT_TRUE(ptrs[0].words.empty());
    const std::string block = words(path->example, ptrs[1]), plate = words(path->example, ptrs[2]);
    EXPECT_TRUE(std::regex_match(block, color)) << block;
    EXPECT_TRUE(std::regex_match(plate, color)) << plate;
    const std::string prompt = ctx_->tokenizer->Decode(
        std::vector<int32_t>(path->example.prompt_ids.begin(), path->example.prompt_ids.end()));
    EXPECT_NE(prompt.find("the " + block + " block on the " + plate + " plate"), std::string::npos) << prompt;

    auto act = tasks_->Act(seed);
    ASSERT_TRUE(act.ok());
    const std::string goal = words(act->example, act->example.pointers[0]);
    EXPECT_TRUE(std::regex_match(goal, color)) << goal;
    const std::string instruction_of_act =
        ctx_->tokenizer->Decode(std::vector<int32_t>(act->example.prompt_ids.begin(), act->example.prompt_ids.end()));
    EXPECT_TRUE(instruction_of_act.find("the " + goal + " block") != std::string::npos ||
                instruction_of_act.find("the " + goal + " plate") != std::string::npos)
        << goal << " in " << instruction_of_act;
    EXPECT_TRUE(act->example.pointers[1].words.empty());  // the gripper is not named

    auto click = tasks_->Click(seed);
    ASSERT_TRUE(click.ok());
    const std::string named = words(click->example, click->example.pointers[0]);
    const std::string instruction = ctx_->tokenizer->Decode(
        std::vector<int32_t>(click->example.prompt_ids.begin(), click->example.prompt_ids.end()));
    EXPECT_FALSE(named.empty());
    EXPECT_EQ(named.find("click"), std::string::npos) << named;
    EXPECT_NE(instruction.find(named), std::string::npos) << named;
  }
  int questions = 0;
  for (uint64_t seed = 0; seed < 20; ++seed) {
    auto q = tasks_->Question(seed);
    ASSERT_TRUE(q.ok());
    for (const auto& p : q->example.pointers) {
      const std::string named = words(q->example, p);
      EXPECT_FALSE(named.empty());
      questions += !named.empty();
    }
  }
  EXPECT_GT(questions, 10);
}

TEST_F(SyntheticTasksTest, PathAndQuestionTargetsDecodeToTheirText) {
  for (uint64_t seed = 0; seed < 10; ++seed) {
    for (auto e : {tasks_->Path(seed), tasks_->Question(seed)}) {
      ASSERT_TRUE(e.ok()) << e.status();
      std::vector<int32_t> ids(e->example.target_ids.begin(), e->example.target_ids.end() - 1);
      EXPECT_EQ(ctx_->tokenizer->Decode(ids), e->target_text);
    }
  }
  // Questions about marks are asked on the marked screen.
  int marked = 0;
  for (uint64_t seed = 0; seed < 40; ++seed) {
    const auto q = worlds::AskAbout(worlds::RenderScreen(seed), seed);
    if (!q.with_marks) continue;
    ++marked;
    auto e = tasks_->Question(seed);
    ASSERT_TRUE(e.ok());
    const auto screen = worlds::RenderScreen(seed);
    auto marked_image = worlds::MarkScreen(screen);
    ASSERT_TRUE(marked_image.ok());
    EXPECT_GT(cv::norm(*marked_image, screen.rgb, cv::NORM_L1), 0);
  }
  EXPECT_GT(marked, 0);
  // The mixture covers every kind.
  std::set<TaskKind> kinds;
  std::map<TaskKind, int> counts;
  for (uint64_t seed = 0; seed < 400; ++seed) ++counts[tasks_->Mixed(seed)->kind];
  EXPECT_EQ(counts.size(), 4u);
  EXPECT_GT(counts[TaskKind::kClick], counts[TaskKind::kPath]);  // 4:1
  // A mix of one kind gives only that kind.
  auto only_path = ParseTaskMix("path=1");
  ASSERT_TRUE(only_path.ok());
  for (uint64_t seed = 0; seed < 20; ++seed) EXPECT_EQ(tasks_->Mixed(seed, *only_path)->kind, TaskKind::kPath);
}

TEST(TaskMixTest, Parses) {
  auto m = ParseTaskMix("click=5,question=1");
  ASSERT_TRUE(m.ok());
  EXPECT_EQ(m->click, 5);
  EXPECT_EQ(m->act, 0);
  EXPECT_EQ(m->path, 0);
  EXPECT_EQ(m->question, 1);
  EXPECT_EQ(ParseTaskMix("jump=1").status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ParseTaskMix("click=x").status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ParseTaskMix("click=0").status().code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace magma::train
