#include "magma/worlds/robot_world.h"

#include <algorithm>
#include <cmath>
#include <random>

#include <opencv2/imgproc.hpp>

#include "absl/strings/str_cat.h"
#include "magma/worlds/ui_world.h"

namespace magma::worlds {
namespace {

double Dist(const vision::NormPoint& a, const vision::NormPoint& b) { return std::hypot(a.x - b.x, a.y - b.y); }

cv::Scalar ColorOf(const std::string& name) {
  for (const auto& [n, c] : UiColors()) {
    if (n == name) return c;
  }
  return cv::Scalar(128, 128, 128);
}

// The expert closes or opens once this close to its goal, in units of
// max_step. Its rounded moves (half steps, or finer with move_divisions) are
// zero on both axes only when each is within half a division of the goal (a
// quarter step with half steps), within sqrt(2)/4 = 0.354 steps: it never
// stalls outside this distance.
constexpr double kArriveSteps = 0.375;

constexpr double kPlateRadius = 0.08, kBlockRadius = 0.04;
// A block lands on a plate when its centre is within this share of the
// plate's radius.
constexpr double kOnPlate = 0.8;

}  // namespace

double ArriveDistance(const RobotWorldOptions& o) { return kArriveSteps * o.max_step; }

double ReleaseDistance(const RobotWorldOptions& o) { return o.release_steps * o.max_step; }

double GripDistance(const RobotScene& s, const RobotWorldOptions& o) {
  return s.held == s.pick ? ReleaseDistance(o) : ArriveDistance(o);
}

const std::vector<std::string>& TableColors() {
  static const std::vector<std::string> kColors = {"red", "green", "blue", "yellow", "purple", "orange"};
  return kColors;
}

absl::Status CheckOptions(const RobotWorldOptions& o) {
  const int colors = static_cast<int>(TableColors().size());
  if (o.blocks < 1 || o.plates < 1 || o.blocks + o.plates > colors) {
    return absl::InvalidArgumentError(absl::StrCat("a tabletop needs at least 1 block and 1 plate and at most ", colors,
                                                   " objects (one per colour); got ", o.blocks, " blocks and ",
                                                   o.plates, " plates"));
  }
  // Below kArriveSteps the expert could stop short of the plate and never
  // open (it stops moving only within sqrt(2)/4 steps); from the edge of the
  // plate's success disc on it could let the block go off the plate.
  if (!(o.release_steps >= kArriveSteps && ReleaseDistance(o) < kOnPlate * kPlateRadius)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "release_steps must be at least ", kArriveSteps, " and release inside the plate's success disc (",
        "release_steps * max_step < ", kOnPlate * kPlateRadius, "); got ", o.release_steps, " steps of ", o.max_step));
  }
  if (o.move_divisions < 2 || o.move_divisions > 16) {
    return absl::InvalidArgumentError(absl::StrCat(
        "move_divisions must be 2 to 16 (moves per axis in steps of 1/move_divisions); got ", o.move_divisions));
  }
  return absl::OkStatus();
}

RobotScene NewEpisode(uint64_t seed, const RobotWorldOptions& o) {
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<double> pos(0.12, 0.88);
  std::vector<std::string> colors = TableColors();
  std::shuffle(colors.begin(), colors.end(), rng);
  RobotScene s;
  size_t next_color = 0;
  auto place_object = [&](const std::string& kind, double radius) {
    for (int attempt = 0; attempt < 200; ++attempt) {
      TableObject obj{colors[next_color % colors.size()], kind, {pos(rng), pos(rng) * 0.85}, radius};
      bool clear = Dist(obj.center, s.gripper) > 0.2;
      for (const auto& other : s.objects) clear = clear && Dist(obj.center, other.center) > obj.radius + other.radius + 0.06;
      if (!clear) continue;
      ++next_color;
      s.objects.push_back(obj);
      return;
    }
  };
  for (int i = 0; i < o.plates; ++i) place_object("plate", kPlateRadius);
  for (int i = 0; i < o.blocks; ++i) place_object("block", kBlockRadius);
  std::vector<int> blocks, plates;
  for (size_t i = 0; i < s.objects.size(); ++i) (s.objects[i].kind == "block" ? blocks : plates).push_back(static_cast<int>(i));
  s.pick = blocks[rng() % blocks.size()];
  s.place = plates[rng() % plates.size()];
  s.instruction = "put the " + s.objects[s.pick].color + " block on the " + s.objects[s.place].color + " plate";
  return s;
}

cv::Mat RenderScene(const RobotScene& s, const RobotWorldOptions& o) {
  const int n = o.image_size;
  cv::Mat img(n, n, CV_8UC3, cv::Scalar(205, 185, 150));  // wooden table
  auto px = [n](const vision::NormPoint& p) { return cv::Point(static_cast<int>(p.x * n), static_cast<int>(p.y * n)); };
  for (const auto& obj : s.objects) {
    if (obj.kind != "plate") continue;
    cv::circle(img, px(obj.center), static_cast<int>(obj.radius * n), ColorOf(obj.color), cv::FILLED, cv::LINE_AA);
    cv::circle(img, px(obj.center), static_cast<int>(obj.radius * n * 0.7), cv::Scalar(240, 240, 240), 2, cv::LINE_AA);
  }
  for (const auto& obj : s.objects) {
    if (obj.kind != "block") continue;
    const int r = static_cast<int>(obj.radius * n);
    const cv::Point c = px(obj.center);
    cv::rectangle(img, cv::Rect(c.x - r, c.y - r, 2 * r, 2 * r), ColorOf(obj.color), cv::FILLED);
    cv::rectangle(img, cv::Rect(c.x - r, c.y - r, 2 * r, 2 * r), cv::Scalar(40, 40, 40), 1);
  }
  // The gripper: two fingers, apart when open (a U seen from above) and
  // pressed together into one bar when closed (a T), so that whether it
  // holds something is plain at the tower's resolution.
  const cv::Point g = px(s.gripper);
  const int spread = s.gripper_open ? n / 22 : 1;
  const cv::Scalar steel(70, 70, 80);
  cv::rectangle(img, cv::Rect(g.x - spread - 3, g.y - 10, 4, 20), steel, cv::FILLED);
  cv::rectangle(img, cv::Rect(g.x + spread - 1, g.y - 10, 4, 20), steel, cv::FILLED);
  cv::rectangle(img, cv::Rect(g.x - spread - 3, g.y - 14, 2 * spread + 6, 5), steel, cv::FILLED);
  return img;
}

void Step(RobotScene* s, const std::array<double, 7>& a, const RobotWorldOptions& o) {
  const double dx = std::clamp(a[0], -1.0, 1.0) * o.max_step, dy = std::clamp(a[1], -1.0, 1.0) * o.max_step;
  s->gripper.x = std::clamp(s->gripper.x + dx, 0.0, 1.0);
  s->gripper.y = std::clamp(s->gripper.y + dy, 0.0, 1.0);
  if (s->held >= 0) s->objects[s->held].center = s->gripper;
  const bool open = a[6] >= 0.5;
  if (!open && s->gripper_open) {
    // Closing grasps the nearest block within reach.
    int best = -1;
    double best_d = kGraspReach;
    for (size_t i = 0; i < s->objects.size(); ++i) {
      const double d = Dist(s->objects[i].center, s->gripper);
      if (s->objects[i].kind == "block" && d <= best_d) {
        best = static_cast<int>(i);
        best_d = d;
      }
    }
    s->held = best;
  } else if (open) {
    s->held = -1;
  }
  s->gripper_open = open;
  ++s->steps;
}

bool Success(const RobotScene& s) {
  const auto& block = s.objects[s.pick];
  const auto& plate = s.objects[s.place];
  return s.held < 0 && s.gripper_open && Dist(block.center, plate.center) <= plate.radius * kOnPlate;
}

const char* OutcomeName(EpisodeOutcome outcome) {
  switch (outcome) {
    case EpisodeOutcome::kSucceeded:
      return "succeeded";
    case EpisodeOutcome::kNeverClosed:
      return "never closed";
    case EpisodeOutcome::kMissedGrasp:
      return "missed grasp";
    case EpisodeOutcome::kWrongBlock:
      return "wrong block";
    case EpisodeOutcome::kReleasedShort:
      return "released short";
    case EpisodeOutcome::kNeverReleased:
      return "never released";
  }
  return "unknown";
}

void EpisodeRecord::Observe(const RobotScene& before, const RobotScene& after) {
  const bool closes = before.gripper_open && !after.gripper_open;
  closed_ = closed_ || closes;
  if (failed_) return;
  if (closes && after.held != after.pick) {
    failed_ = true;
    failure_ = after.held < 0 ? EpisodeOutcome::kMissedGrasp : EpisodeOutcome::kWrongBlock;
    if (after.held < 0) distance_ = Dist(after.gripper, after.objects[after.pick].center);
  } else if (before.held == before.pick && after.held < 0 && !Success(after)) {
    failed_ = true;
    failure_ = EpisodeOutcome::kReleasedShort;
    distance_ = Dist(after.objects[after.pick].center, after.objects[after.place].center);
  }
}

EpisodeOutcome EpisodeRecord::Outcome(const RobotScene& last) const {
  if (Success(last)) return EpisodeOutcome::kSucceeded;
  if (failed_) return failure_;
  if (last.held == last.pick) return EpisodeOutcome::kNeverReleased;
  return closed_ ? EpisodeOutcome::kReleasedShort : EpisodeOutcome::kNeverClosed;
}

std::array<double, 7> ExpertAction(const RobotScene& s, const RobotWorldOptions& o) {
  std::array<double, 7> a{0, 0, 0, 0, 0, 0, 1};
  const bool carrying = s.held == s.pick;
  const vision::NormPoint goal = carrying ? s.objects[s.place].center : s.objects[s.pick].center;
  const double dx = goal.x - s.gripper.x, dy = goal.y - s.gripper.y;
  // At the plate: open. At the block: close - unless the gripper is already
  // closed on nothing (a missed grasp), which only grasps again after it has
  // been opened, so open first.
  const double arrived_grip = carrying || !s.gripper_open ? 1 : 0;
  const double arrive = GripDistance(s, o);
  // Without grip_on_the_move, once within the arrival distance it grips on a
  // still step.
  if (!o.grip_on_the_move && std::hypot(dx, dy) <= arrive) {
    a[6] = arrived_grip;
    return a;
  }
  // Toward the goal, at most one full step per axis, in multiples of
  // 1/move_divisions: 2 * move_divisions + 1 moves per axis (by default
  // five, -1, -1/2, 0, 1/2, 1), each common enough in the demonstrations for
  // a policy to learn when to take it.
  const double n = o.move_divisions;
  auto move = [&](double delta) { return std::clamp(std::round(n * delta / o.max_step) / n, -1.0, 1.0); };
  a[0] = move(dx);
  a[1] = move(dy);
  // With grip_on_the_move it grips on the move that ends within the arrival
  // distance (Step clamps the gripper to the table).
  const double ex = std::clamp(s.gripper.x + a[0] * o.max_step, 0.0, 1.0);
  const double ey = std::clamp(s.gripper.y + a[1] * o.max_step, 0.0, 1.0);
  const bool arrives = o.grip_on_the_move && std::hypot(goal.x - ex, goal.y - ey) <= arrive;
  // On the way it keeps holding the named block; any other gripper opens
  // (an open one stays open, one closed on nothing or the wrong block lets
  // go).
  a[6] = arrives ? arrived_grip : (carrying ? 0 : 1);
  return a;
}

std::vector<vision::PathWaypoint> ExpertPath(const RobotScene& s) {
  return {{s.gripper, vision::Gripper::kOpen},
          {s.objects[s.pick].center, vision::Gripper::kClosed},
          {s.objects[s.place].center, vision::Gripper::kOpen}};
}

}  // namespace magma::worlds
