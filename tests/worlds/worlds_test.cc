#include <cmath>
#include <functional>
#include <map>
#include <random>
#include <set>
#include <tuple>
#include <utility>
#include <vector>

#include <gtest/gtest.h>

#include "absl/strings/str_cat.h"

#include "magma/agent/action_codec.h"
#include "magma/agent/path_answer.h"
#include "magma/vision/propose.h"
#include "magma/worlds/robot_world.h"
#include "magma/worlds/ui_world.h"

namespace magma::worlds {
namespace {

TEST(UiWorldTest, SameSeedSameScreen) {
  const UiScreen a = RenderScreen(11), b = RenderScreen(11), c = RenderScreen(12);
  EXPECT_EQ(cv::norm(a.rgb, b.rgb, cv::NORM_INF), 0);
  ASSERT_EQ(a.widgets.size(), b.widgets.size());
  for (size_t i = 0; i < a.widgets.size(); ++i) EXPECT_EQ(a.widgets[i].box, b.widgets[i].box);
  EXPECT_GT(cv::norm(a.rgb, c.rgb, cv::NORM_L1), 0);
}

TEST(UiWorldTest, WidgetsAreInsideAndApart) {
  UiWorldOptions o;
  for (uint64_t seed = 0; seed < 100; ++seed) {
    const UiScreen s = RenderScreen(seed, o);
    ASSERT_GE(static_cast<int>(s.widgets.size()), o.min_widgets) << seed;
    ASSERT_LE(static_cast<int>(s.widgets.size()), o.max_widgets) << seed;
    for (size_t i = 0; i < s.widgets.size(); ++i) {
      const auto& b = s.widgets[i].box;
      EXPECT_GE(b.x1, 0);
      EXPECT_GE(b.y1, 28);  // below the title bar
      EXPECT_LE(b.x2, o.width);
      EXPECT_LE(b.y2, o.height);
      for (size_t j = 0; j < i; ++j) EXPECT_EQ(vision::IoU(b, s.widgets[j].box), 0) << seed;
    }
  }
}

// Each label's text box holds the label's ink: the pixels that differ from
// what the text is drawn on (a button's fill, the page behind a checkbox's
// label, a text field's white) span the box's width and stay inside it.
TEST(UiWorldTest, TextBoxesHoldTheLabels) {
  int checked = 0;
  for (uint64_t seed = 0; seed < 50; ++seed) {
    const UiScreen s = RenderScreen(seed);
    for (const auto& w : s.widgets) {
      if (w.label.empty()) {
        EXPECT_EQ(w.text.x2 - w.text.x1, 0) << seed;
        continue;
      }
      // Where to look for ink, and what is not ink there.
      int x1 = static_cast<int>(w.box.x1), x2 = static_cast<int>(w.box.x2);
      const int y1 = static_cast<int>(w.box.y1) + 3, y2 = static_cast<int>(w.box.y2) - 3;
      std::function<bool(const cv::Vec3b&)> ink;
      if (w.kind == "button") {
        if (w.shape == "rounded") {
          x1 += (y2 - y1 + 6) / 2;
          x2 -= (y2 - y1 + 6) / 2;
        }
        const cv::Vec3b fill = s.rgb.at<cv::Vec3b>(static_cast<int>(w.box.y1) + 1, (x1 + x2) / 2);
        ink = [fill](const cv::Vec3b& p) { return cv::norm(cv::Vec3i(p) - cv::Vec3i(fill), cv::NORM_INF) > 40; };
      } else if (w.kind == "checkbox") {
        x1 += 21;
        ink = [](const cv::Vec3b& p) { return p[0] < 150 && p[1] < 150 && p[2] < 150; };
      } else {
        x1 += 3;
        x2 -= 3;
        ink = [](const cv::Vec3b& p) { return p[0] < 235 && p[0] == p[1] && p[1] == p[2]; };
      }
      int ix1 = x2, ix2 = x1, iy1 = y2, iy2 = y1;
      for (int y = y1; y < y2; ++y) {
        for (int x = x1; x < x2; ++x) {
          if (!ink(s.rgb.at<cv::Vec3b>(y, x))) continue;
          ix1 = std::min(ix1, x);
          ix2 = std::max(ix2, x + 1);
          iy1 = std::min(iy1, y);
          iy2 = std::max(iy2, y + 1);
        }
      }
      ASSERT_LT(ix1, ix2) << seed << " " << w.label;
      EXPECT_GE(ix1, w.text.x1 - 2) << seed << " " << w.label;
      EXPECT_LE(ix2, w.text.x2 + 2) << seed << " " << w.label;
      EXPECT_GE(iy1, w.text.y1 - 2) << seed << " " << w.label;
      EXPECT_LE(iy2, w.text.y2 + 2) << seed << " " << w.label;
      EXPECT_GE(ix2 - ix1, 0.8 * (w.text.x2 - w.text.x1)) << seed << " " << w.label;
      ++checked;
    }
  }
  EXPECT_GT(checked, 100);
}

TEST(UiWorldTest, InstructionsNameExactlyOneWidget) {
  int total = 0;
  for (uint64_t seed = 0; seed < 200; ++seed) {
    const UiScreen s = RenderScreen(seed);
    const auto instructions = Instructions(s);
    EXPECT_FALSE(instructions.empty()) << seed;
    std::map<std::string, std::set<int>> targets;
    for (const auto& in : instructions) {
      targets[in.text].insert(in.target);
      const auto& w = s.widgets[in.target];
      // The text names the widget: its label, or its colour, shape and kind.
      const bool by_label = !w.label.empty() && in.text.find(w.label) != std::string::npos;
      const bool by_look = in.text.find(w.color + " " + w.shape) != std::string::npos;
      EXPECT_TRUE(by_label || by_look) << in.text;
      EXPECT_EQ(in.by_label, by_label) << in.text;
      // `names` is the part of the text that does it.
      EXPECT_EQ(in.names, by_label && w.kind == "text_field" ? w.label + " field"
                          : by_label                         ? w.label
                                                             : in.text.substr(10)) << in.text;
      EXPECT_NE(in.text.find(in.names), std::string::npos) << in.text;
      ++total;
    }
    for (const auto& [text, t] : targets) EXPECT_EQ(t.size(), 1u) << "'" << text << "' is ambiguous, seed " << seed;
  }
  EXPECT_GT(total, 600);
}

TEST(UiWorldTest, ProposerFindsMostWidgets) {
  int found = 0, total = 0;
  for (uint64_t seed = 0; seed < 30; ++seed) {
    const UiScreen s = RenderScreen(seed);
    auto boxes = vision::ProposeElements(s.rgb);
    ASSERT_TRUE(boxes.ok());
    for (const auto& w : s.widgets) {
      ++total;
      for (const auto& b : *boxes) {
        if (vision::IoU(w.box, b) >= 0.5) {
          ++found;
          break;
        }
      }
    }
  }
  // Measured 0.85 (170 of 201) on these 30 screens.
  EXPECT_GE(static_cast<double>(found) / total, 0.6) << found << " of " << total;
}

// Questions on a screen built by hand, answers checked against what the
// screen obviously shows.
TEST(UiWorldTest, QuestionsAnswerWhatTheScreenShows) {
  UiScreen screen;
  screen.rgb = cv::Mat(320, 448, CV_8UC3, cv::Scalar(240, 240, 240));
  screen.widgets = {{{10, 40, 90, 70}, "button", "rounded", "red", "Save"},
                    {{110, 40, 190, 70}, "button", "rectangle", "blue", "Open"},
                    {{210, 40, 240, 70}, "icon", "circle", "green", ""},
                    {{10, 100, 200, 130}, "text_field", "rectangle", "gray", "Search"}};
  std::set<std::string> seen;
  for (uint64_t seed = 0; seed < 200; ++seed) {
    const UiQuestion q = AskAbout(screen, seed);
    seen.insert(q.question);
    EXPECT_NE(q.question.find(q.names), std::string::npos) << q.question;
    // Only colour and mark answers say how their one widget looks.
    const bool about_look = q.question.rfind("What ", 0) == 0;
    EXPECT_EQ(q.answers_look, about_look) << q.question;
    if (about_look) {
      EXPECT_EQ(q.about.size(), 1u) << q.question;
    }
    if (q.question == "How many buttons are there?") {
      EXPECT_EQ(q.answer, "2");
      EXPECT_EQ(q.names, "buttons");
    } else if (q.question.rfind("Is there a", 0) == 0) {
      // "an" before the one colour with a vowel.
      EXPECT_EQ(q.question.rfind("Is there an ", 0) == 0, q.names.rfind("orange ", 0) == 0) << q.question;
      const bool yes = q.question == "Is there a red button?" || q.question == "Is there a blue button?" ||
                       q.question == "Is there a green icon?" || q.question == "Is there a gray text field?";
      EXPECT_EQ(q.answer, yes ? "Yes." : "No.") << q.question;
    } else if (q.question == "What color is the Save button?") {
      EXPECT_EQ(q.answer, "red");
      EXPECT_EQ(q.names, "Save button");
    } else if (q.question == "What color is the Open button?") {
      EXPECT_EQ(q.answer, "blue");
    } else if (q.question == "What color is the Search field?") {
      EXPECT_EQ(q.answer, "gray");
    } else if (q.question == "What is at mark 0?") {
      EXPECT_EQ(q.answer, "The Save button.");
      EXPECT_TRUE(q.with_marks);
      EXPECT_EQ(q.names, "mark 0");
    } else if (q.question == "What is at mark 2?") {
      EXPECT_EQ(q.answer, "The green circle icon.");
    } else if (q.question == "What is at mark 3?") {
      EXPECT_EQ(q.answer, "The Search field.");
    } else if (q.question != "What is at mark 1?") {
      ADD_FAILURE() << "unexpected question: " << q.question;
    }
  }
  EXPECT_TRUE(seen.count("What is at mark 1?"));
  EXPECT_TRUE(seen.count("What color is the Open button?"));
  EXPECT_TRUE(seen.count("Is there a red button?"));
  EXPECT_TRUE(seen.count("Is there an orange button?") || seen.count("Is there an orange icon?") ||
              seen.count("Is there an orange text field?"));
  EXPECT_GE(seen.size(), 10u);
}

// Scenes need a block and a plate, and one colour per object: six in all.
TEST(RobotWorldTest, OptionsNeedABlockAPlateAndAColourEach) {
  RobotWorldOptions o;
  EXPECT_TRUE(CheckOptions(o).ok());
  o.blocks = 1;
  o.plates = 1;
  EXPECT_TRUE(CheckOptions(o).ok());
  o.blocks = 4;
  o.plates = 2;
  EXPECT_TRUE(CheckOptions(o).ok());
  for (const auto& [blocks, plates] : std::vector<std::pair<int, int>>{{0, 2}, {3, 0}, {5, 2}, {-1, 3}}) {
    o.blocks = blocks;
    o.plates = plates;
    const absl::Status s = CheckOptions(o);
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << blocks << " " << plates;
    EXPECT_NE(s.message().find("at most 6 objects"), std::string::npos) << s;
  }
}

// The release disc must let the expert finish (at least 0.375 steps) and
// land the block on the plate (below 0.8 of the plate's 0.08 radius).
TEST(RobotWorldTest, ReleaseStepsStayInsideThePlate) {
  RobotWorldOptions o;
  EXPECT_DOUBLE_EQ(ReleaseDistance(o), ArriveDistance(o));
  for (double steps : {0.375, 0.5, 0.79}) {
    o.release_steps = steps;
    EXPECT_TRUE(CheckOptions(o).ok()) << steps;
  }
  for (double steps : {0.3, 0.8, 2.0, -1.0, std::nan("")}) {
    o.release_steps = steps;
    const absl::Status s = CheckOptions(o);
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << steps;
    EXPECT_NE(s.message().find("release_steps must be at least 0.375"), std::string::npos) << s;
  }
}

TEST(RobotWorldTest, ExpertSolvesEveryEpisode) {
  RobotWorldOptions o;
  for (uint64_t seed = 0; seed < 200; ++seed) {
    RobotScene s = NewEpisode(seed, o);
    EXPECT_FALSE(Success(s));
    int steps = 0;
    while (!Success(s) && steps < 60) {
      Step(&s, ExpertAction(s, o), o);
      ++steps;
    }
    EXPECT_TRUE(Success(s)) << "seed " << seed << ": " << s.instruction;
  }
}

// A hand-built table: the red block (to pick) at (0.3, 0.3), the green one
// at (0.6, 0.3), the blue plate (radius 0.08: success within 0.064) at
// (0.5, 0.7); the gripper open at (0.3, 0.5). Plays `actions` (dx, dy in
// steps of 0.08, gripper: 1 open, 0 closed) and returns the outcome and
// the failure's distance.
std::pair<EpisodeOutcome, double> Play(const std::vector<std::array<double, 3>>& actions,
                                       vision::NormPoint start = {0.3, 0.5}) {
  RobotScene s;
  s.objects = {
      {"red", "block", {0.3, 0.3}, 0.03}, {"green", "block", {0.6, 0.3}, 0.03}, {"blue", "plate", {0.5, 0.7}, 0.08}};
  s.pick = 0;
  s.place = 2;
  s.gripper = start;
  EpisodeRecord record;
  for (const auto& a : actions) {
    const RobotScene before = s;
    Step(&s, {a[0], a[1], 0, 0, 0, 0, a[2]});
    record.Observe(before, s);
  }
  return {record.Outcome(s), record.FailureDistance()};
}

TEST(RobotWorldTest, EpisodeOutcomesNameTheFirstFailure) {
  // Closed 0.2 below the red block: nothing within the grasp's 0.05.
  auto [outcome, d] = Play({{0, 0, 0}});
  EXPECT_EQ(outcome, EpisodeOutcome::kMissedGrasp);
  EXPECT_NEAR(d, 0.2, 1e-9);
  EXPECT_STREQ(OutcomeName(outcome), "missed grasp");
  // Closed 0.02 below the green block.
  std::tie(outcome, d) = Play({{0, 0, 0}}, {0.6, 0.32});
  EXPECT_EQ(outcome, EpisodeOutcome::kWrongBlock);
  EXPECT_TRUE(std::isnan(d));
  // The red block grasped, carried to (0.38, 0.40) and let go there:
  // hypot(0.12, 0.30) = 0.3231 from the plate's centre.
  std::tie(outcome, d) = Play({{0, 0, 0}, {0, 1, 0}, {1, 0, 0}, {0, 0, 1}}, {0.3, 0.32});
  EXPECT_EQ(outcome, EpisodeOutcome::kReleasedShort);
  EXPECT_NEAR(d, std::hypot(0.12, 0.30), 1e-9);
  // Grasped and still held at the end.
  std::tie(outcome, d) = Play({{0, 0, 0}, {0, 1, 0}}, {0.3, 0.32});
  EXPECT_EQ(outcome, EpisodeOutcome::kNeverReleased);
  // Moved about with the gripper open.
  std::tie(outcome, d) = Play({{1, 0, 1}, {0, -1, 1}});
  EXPECT_EQ(outcome, EpisodeOutcome::kNeverClosed);
  // Grasped, carried to (0.5, 0.70) in five moves, let go on the plate.
  const std::vector<std::array<double, 3>> carry = {{0, 0, 0}, {1, 1, 0},    {1, 1, 0}, {0.5, 1, 0},
                                                    {0, 1, 0}, {0, 0.75, 0}, {0, 0, 1}};
  std::tie(outcome, d) = Play(carry, {0.3, 0.32});
  EXPECT_EQ(outcome, EpisodeOutcome::kSucceeded);
  EXPECT_TRUE(std::isnan(d));
  // A step down (0.10 below the block) and a close that misses, back up,
  // then the same carry: success counts.
  std::vector<std::array<double, 3>> retry = {{0, 1, 0}, {0, 0, 1}, {0, -1, 1}};
  retry.insert(retry.end(), carry.begin(), carry.end());
  std::tie(outcome, d) = Play(retry, {0.3, 0.32});
  EXPECT_EQ(outcome, EpisodeOutcome::kSucceeded);
  // The same miss, then the block grasped and dropped short: the miss is
  // the first failure.
  std::tie(outcome, d) = Play({{0, 1, 0}, {0, 0, 1}, {0, -1, 1}, {0, 0, 0}, {0, 0, 1}}, {0.3, 0.32});
  EXPECT_EQ(outcome, EpisodeOutcome::kMissedGrasp);
  EXPECT_NEAR(d, 0.10, 1e-9);
}

TEST(RobotWorldTest, ExpertRecoversFromAMissedGrasp) {
  RobotWorldOptions o;
  RobotScene s = NewEpisode(3, o);
  const vision::NormPoint block = s.objects[s.pick].center;
  // Closed on nothing, right over the block: closing again would grasp
  // nothing (only an open gripper grasps), so the expert opens in place...
  s.gripper = block;
  s.gripper_open = false;
  auto a = ExpertAction(s, o);
  EXPECT_EQ(a[0], 0);
  EXPECT_EQ(a[1], 0);
  EXPECT_EQ(a[6], 1);
  Step(&s, a, o);
  EXPECT_TRUE(s.gripper_open);
  // ...then closes and holds the block.
  a = ExpertAction(s, o);
  EXPECT_EQ(a[6], 0);
  Step(&s, a, o);
  EXPECT_EQ(s.held, s.pick);
  // Closed on nothing a step and a half to the right of the block: it opens
  // while it moves back (one full step, then half a step).
  s = NewEpisode(3, o);
  s.gripper = {block.x + 1.5 * o.max_step, block.y};
  s.gripper_open = false;
  a = ExpertAction(s, o);
  EXPECT_EQ(a[0], -1);
  EXPECT_EQ(a[1], 0);
  EXPECT_EQ(a[6], 1);
}

TEST(RobotWorldTest, ExpertSucceedsFromScatteredStates) {
  // The states a drifting policy leaves behind: the gripper anywhere, open or
  // closed, holding the block or not.
  RobotWorldOptions o;
  std::mt19937_64 rng(11);
  std::uniform_real_distribution<double> place(0.02, 0.98);
  for (uint64_t seed = 0; seed < 200; ++seed) {
    RobotScene s = NewEpisode(seed, o);
    s.gripper = {place(rng), place(rng)};
    s.gripper_open = rng() % 2 == 0;
    if (!s.gripper_open && rng() % 2 == 0) {
      s.held = s.pick;
      s.objects[s.pick].center = s.gripper;
    }
    for (int step = 0; step < 60 && !Success(s); ++step) Step(&s, ExpertAction(s, o), o);
    EXPECT_TRUE(Success(s)) << "seed " << seed;
  }
}

// The expert's moves per axis over 100 episodes (value -> count), which it
// must all solve; `closes` counts its grasps, each within 0.375 steps
// (0.03) of the block, inside grasp reach (0.05).
std::map<double, int> ExpertMoves(const RobotWorldOptions& o, int* closes) {
  std::map<double, int> moves;
  *closes = 0;
  for (uint64_t seed = 0; seed < 100; ++seed) {
    RobotScene s = NewEpisode(seed, o);
    for (int step = 0; step < 60 && !Success(s); ++step) {
      const auto a = ExpertAction(s, o);
      for (int d = 0; d < 2; ++d) ++moves[a[d]];
      if (a[6] == 0 && s.held < 0) {
        ++*closes;
        EXPECT_LE(std::hypot(s.gripper.x - s.objects[s.pick].center.x, s.gripper.y - s.objects[s.pick].center.y),
                  0.03 + 1e-9);
      }
      Step(&s, a, o);
    }
    EXPECT_TRUE(Success(s)) << "seed " << seed << ", " << o.move_divisions << " divisions";
  }
  return moves;
}

TEST(RobotWorldTest, ExpertMovesInHalfSteps) {
  // Every move of every episode is -1, -1/2, 0, 1/2 or 1 per axis; near the
  // goal the half steps and zeros show up.
  int closes = 0;
  auto moves = ExpertMoves(RobotWorldOptions{}, &closes);
  for (const auto& [move, count] : moves) {
    EXPECT_TRUE(move == -1 || move == -0.5 || move == 0 || move == 0.5 || move == 1) << move;
  }
  EXPECT_EQ(moves.size(), 5u);
  EXPECT_GT(moves[0.5] + moves[-0.5], 20);
  EXPECT_GE(closes, 100);
}

// With move_divisions 4 the expert moves in quarter steps: every move is a
// multiple of 1/4 per axis and all nine show up. With 3, 4, 8 or 16 it
// still closes within the arrival distance and solves every episode.
TEST(RobotWorldTest, ExpertMovesInFinerSteps) {
  RobotWorldOptions o;
  o.move_divisions = 4;
  ASSERT_TRUE(CheckOptions(o).ok());
  // 0.065 left of the block (0.8125 steps): half steps round it to a full
  // step (0.015 past the block), quarter steps to three quarters (0.005
  // short of it). 0.072 above it (0.9 steps): a full step in quarter steps,
  // 7/8 in eighths.
  RobotScene s = NewEpisode(3, o);
  const vision::NormPoint block = s.objects[s.pick].center;
  s.gripper = {block.x - 0.065, block.y - 0.072};
  EXPECT_EQ(ExpertAction(s, o)[0], 0.75);
  EXPECT_EQ(ExpertAction(s, o)[1], 1);
  EXPECT_EQ(ExpertAction(s, RobotWorldOptions{})[0], 1);
  RobotWorldOptions eighths;
  eighths.move_divisions = 8;
  EXPECT_EQ(ExpertAction(s, eighths)[1], 0.875);
  for (int n : {3, 4, 8, 16}) {
    o.move_divisions = n;
    int closes = 0;
    auto moves = ExpertMoves(o, &closes);
    EXPECT_GE(closes, 100) << n;
    for (const auto& [move, count] : moves) EXPECT_NEAR(move * n, std::round(move * n), 1e-9) << move;
    if (n == 4) {
      EXPECT_EQ(moves.size(), 9u);
      EXPECT_GT(moves[0.25] + moves[-0.25] + moves[0.75] + moves[-0.75], 20);
    }
  }
}

// Moves finer than a sixteenth of a step, or coarser than a half step
// (which could stop the expert outside its arrival distance), are refused.
TEST(RobotWorldTest, MoveDivisionsAreTwoToSixteen) {
  RobotWorldOptions o;
  for (int n : {2, 3, 8, 16}) {
    o.move_divisions = n;
    EXPECT_TRUE(CheckOptions(o).ok()) << n;
  }
  for (int n : {-2, 0, 1, 17}) {
    o.move_divisions = n;
    const absl::Status s = CheckOptions(o);
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << n;
    EXPECT_EQ(s.message(),
              absl::StrCat("move_divisions must be 2 to 16 (moves per axis in steps of 1/move_divisions); got ", n));
  }
}

TEST(RobotWorldTest, ExpertGripsOnTheMove) {
  RobotWorldOptions o;
  o.grip_on_the_move = true;
  RobotScene s = NewEpisode(3, o);
  const vision::NormPoint block = s.objects[s.pick].center;
  // Open, 0.15 left of the block: a full step ends 0.07 short, beyond the
  // arrival distance (0.03), so it moves on, open.
  s.gripper = {block.x - 0.15, block.y};
  auto a = ExpertAction(s, o);
  EXPECT_EQ(a[0], 1);
  EXPECT_EQ(a[1], 0);
  EXPECT_EQ(a[6], 1);
  // 0.07 left of the block and 0.01 above it: a full step (0.07 rounds to
  // 0.08) ends 0.014 from it, so it closes on that move.
  s.gripper = {block.x - 0.07, block.y - 0.01};
  a = ExpertAction(s, o);
  EXPECT_EQ(a[0], 1);
  EXPECT_EQ(a[6], 0);
  // 0.05 left of the block: a half step ends 0.01 from it, so it closes on
  // that move and holds the block after it.
  s.gripper = {block.x - 0.05, block.y};
  a = ExpertAction(s, o);
  EXPECT_EQ(a[0], 0.5);
  EXPECT_EQ(a[1], 0);
  EXPECT_EQ(a[6], 0);
  Step(&s, a, o);
  EXPECT_EQ(s.held, s.pick);
  // Carrying, 0.09 above the plate: a full step ends 0.01 from it, so it
  // opens there and the block lands on the plate.
  const vision::NormPoint plate = s.objects[s.place].center;
  s.gripper = {plate.x, plate.y - 0.09};
  s.objects[s.pick].center = s.gripper;
  a = ExpertAction(s, o);
  EXPECT_EQ(a[0], 0);
  EXPECT_EQ(a[1], 1);
  EXPECT_EQ(a[6], 1);
  Step(&s, a, o);
  EXPECT_TRUE(Success(s));
  // The same carry 0.15 away only moves (a full step ends 0.07 short).
  s = NewEpisode(3, o);
  s.held = s.pick;
  s.gripper_open = false;
  s.gripper = {plate.x, plate.y - 0.15};
  s.objects[s.pick].center = s.gripper;
  a = ExpertAction(s, o);
  EXPECT_EQ(a[1], 1);
  EXPECT_EQ(a[6], 0);
  // Closed on nothing next to the block: it opens while it moves back.
  s = NewEpisode(3, o);
  s.gripper = {block.x + 0.04, block.y};
  s.gripper_open = false;
  a = ExpertAction(s, o);
  EXPECT_EQ(a[0], -0.5);
  EXPECT_EQ(a[6], 1);
  // Whole episodes, from the start and from scattered states: every one
  // succeeds, each grasp on a moving step or with the gripper already there.
  std::mt19937_64 rng(5);
  std::uniform_real_distribution<double> place(0.02, 0.98);
  int moving_grips = 0;
  for (uint64_t seed = 0; seed < 200; ++seed) {
    s = NewEpisode(seed, o);
    if (seed % 2 == 1) s.gripper = {place(rng), place(rng)};
    for (int step = 0; step < 60 && !Success(s); ++step) {
      a = ExpertAction(s, o);
      if (a[6] == 0 && s.gripper_open && (a[0] != 0 || a[1] != 0)) ++moving_grips;
      Step(&s, a, o);
    }
    EXPECT_TRUE(Success(s)) << "seed " << seed;
  }
  EXPECT_GT(moving_grips, 150);
}

// A wider release disc: carrying, the expert opens once the block is within
// release_steps steps of the plate's centre, still or on the move, and the
// block lands; it grasps as before.
TEST(RobotWorldTest, ExpertReleasesWithinReleaseSteps) {
  for (bool on_the_move : {false, true}) {
    RobotWorldOptions o;
    o.grip_on_the_move = on_the_move;
    RobotScene carry = NewEpisode(3, o);
    const vision::NormPoint plate = carry.objects[carry.place].center;
    carry.held = carry.pick;
    carry.gripper_open = false;
    auto put = [&](double dx, double dy) {
      RobotScene s = carry;
      s.gripper = {plate.x + dx, plate.y + dy};
      s.objects[s.pick].center = s.gripper;
      return s;
    };
    // Carrying, 0.04 (half a step) right of the plate's centre: by default
    // the expert moves half a step on, closed (still) or opens with that
    // move (on the move); with 0.6 steps it opens where it is (still) or
    // with the same move (on the move), and the block lands either way.
    RobotScene s = put(0.04, 0);
    auto a = ExpertAction(s, o);
    EXPECT_EQ(a[0], -0.5) << on_the_move;
    EXPECT_EQ(a[6], on_the_move ? 1 : 0) << on_the_move;
    o.release_steps = 0.6;
    a = ExpertAction(s, o);
    EXPECT_EQ(a[0], on_the_move ? -0.5 : 0) << on_the_move;
    EXPECT_EQ(a[6], 1) << on_the_move;
    Step(&s, a, o);
    EXPECT_TRUE(Success(s)) << on_the_move;
    // 0.12 right of and 0.04 above the plate: a full step and a half step
    // end 0.04 from it (0.5 steps), past the default disc (0.375 steps), so
    // the default expert keeps the block and the 0.6-step one lets it go
    // there, on the plate (0.04 < 0.064).
    if (on_the_move) {
      s = put(0.12, -0.04);
      o.release_steps = 0.375;
      a = ExpertAction(s, o);
      EXPECT_EQ(a[0], -1);
      EXPECT_EQ(a[1], 0.5);
      EXPECT_EQ(a[6], 0);
      o.release_steps = 0.6;
      a = ExpertAction(s, o);
      EXPECT_EQ(a[0], -1);
      EXPECT_EQ(a[6], 1);
      Step(&s, a, o);
      EXPECT_TRUE(Success(s));
    }
    // The grasp does not change: open, 0.035 from the block (0.44 steps).
    RobotScene g = NewEpisode(3, o);
    const vision::NormPoint block = g.objects[g.pick].center;
    g.gripper = {block.x + 0.035, block.y};
    o.release_steps = 0.6;
    const auto wide = ExpertAction(g, o);
    o.release_steps = 0.375;
    EXPECT_EQ(ExpertAction(g, o), wide) << on_the_move;
    // Whole episodes, from the start and from scattered states, with the
    // widest disc allowed: every one succeeds.
    o.release_steps = 0.79;
    std::mt19937_64 rng(7);
    std::uniform_real_distribution<double> place(0.02, 0.98);
    for (uint64_t seed = 0; seed < 200; ++seed) {
      s = NewEpisode(seed, o);
      if (seed % 2 == 1) s.gripper = {place(rng), place(rng)};
      for (int step = 0; step < 60 && !Success(s); ++step) Step(&s, ExpertAction(s, o), o);
      EXPECT_TRUE(Success(s)) << "seed " << seed << " on the move " << on_the_move;
    }
  }
}

TEST(RobotWorldTest, ExpertStillSucceedsThroughTheActionTokens) {
  // Actions pass through the 256-bin codec as a model would emit them.
  auto codec = agent::ActionCodec::Create({});
  ASSERT_TRUE(codec.ok());
  RobotWorldOptions o;
  int successes = 0;
  for (uint64_t seed = 0; seed < 100; ++seed) {
    RobotScene s = NewEpisode(seed, o);
    for (int step = 0; step < 80 && !Success(s); ++step) {
      std::array<double, 7> a = ExpertAction(s, o);
      std::vector<double> normalized(a.begin(), a.end());
      normalized[6] = normalized[6] * 2 - 1;  // gripper 0/1 -> -1/1
      auto decoded = codec->Decode(codec->Encode(normalized));
      ASSERT_TRUE(decoded.ok());
      for (int d = 0; d < 6; ++d) a[d] = (*decoded)[d];
      a[6] = ((*decoded)[6] + 1) / 2;
      Step(&s, a, o);
    }
    successes += Success(s);
  }
  EXPECT_EQ(successes, 100);
}

TEST(RobotWorldTest, ScenesRenderDeterministically) {
  const RobotScene s = NewEpisode(5);
  const cv::Mat a = RenderScene(s), b = RenderScene(s);
  EXPECT_EQ(a.size(), cv::Size(256, 256));
  EXPECT_EQ(cv::norm(a, b, cv::NORM_INF), 0);
  RobotScene moved = s;
  Step(&moved, {1, 0, 0, 0, 0, 0, 1});
  EXPECT_GT(cv::norm(RenderScene(moved), a, cv::NORM_L1), 0);
}

TEST(RobotWorldTest, ExpertPathRoundTripsThroughTheAnswerFormat) {
  const RobotScene s = NewEpisode(9);
  const auto path = ExpertPath(s);
  ASSERT_EQ(path.size(), 3u);
  EXPECT_EQ(path[1].gripper, vision::Gripper::kClosed);
  EXPECT_EQ(path[2].gripper, vision::Gripper::kOpen);
  auto parsed = agent::ParsePathAnswer(agent::FormatPathAnswer(path));
  ASSERT_TRUE(parsed.ok()) << parsed.status();
  ASSERT_EQ(parsed->size(), 3u);
  for (size_t i = 0; i < 3; ++i) {
    EXPECT_NEAR((*parsed)[i].point.x, path[i].point.x, 1e-3);
    EXPECT_EQ((*parsed)[i].gripper, path[i].gripper);
  }
}

}  // namespace
}  // namespace magma::worlds
