// A synthetic top-down tabletop for training and evaluating robot actions and
// 2D paths: coloured blocks and plates, a gripper, instructions such as "put
// the red block on the blue plate", a simulator that applies 7-DoF actions
// (translation in the image plane; rotations and height ignored; gripper)
// and an expert. Deterministic by seed.
#ifndef MAGMA_WORLDS_ROBOT_WORLD_H_
#define MAGMA_WORLDS_ROBOT_WORLD_H_

#include <array>
#include <cstdint>
#include <limits>
#include <string>
#include <vector>

#include <opencv2/core.hpp>

#include "absl/status/status.h"
#include "magma/vision/geometry.h"
#include "magma/vision/overlay.h"

namespace magma::worlds {

struct TableObject {
  std::string color;   // e.g. "red"
  std::string kind;    // "block" (can be picked) or "plate" (a target)
  vision::NormPoint center;
  double radius = 0.05;  // normalised half-size
};

struct RobotScene {
  std::vector<TableObject> objects;
  vision::NormPoint gripper{0.5, 0.9};
  bool gripper_open = true;
  int held = -1;  // index of the block in the gripper, or -1
  int pick = 0;   // block to move
  int place = 0;  // plate to put it on
  std::string instruction;
  int steps = 0;
};

struct RobotWorldOptions {
  int image_size = 256;  // square images, pixels
  int blocks = 3;
  int plates = 2;
  // Largest translation per step in normalised units; an action of +-1
  // moves this far.
  double max_step = 0.08;
  // The expert grips on the move: it closes (at the block) or opens (at the
  // plate) in the same step as the move that ends within ArriveDistance of
  // its goal, as a real arm closes its fingers on the approach, instead of
  // moving there first and gripping, still, on the next step. A policy that
  // decides to grip a step early then still moves on to the goal.
  bool grip_on_the_move = false;
  // How close to the plate's centre the expert opens the gripper when it
  // carries the named block, in steps (units of max_step). The default
  // releases as it grasps, within ArriveDistance. A wider disc gives a
  // policy that misjudges the last move a release that still lands the
  // block (success needs it within 0.8 of the plate's radius, 0.064), where
  // the default leaves it carrying a short way off the plate. At least
  // 0.375 (the expert's rounded moves are both zero only within sqrt(2)/4
  // steps), and the release distance inside the success disc (below 0.8
  // steps of 0.08).
  double release_steps = 0.375;
  // The expert's moves per axis are multiples of 1/move_divisions of a step
  // (the goal's offset rounded to the nearest one, clamped to a full step):
  // 2 (the default) moves in half steps, -1, -1/2, 0, 1/2, 1; 4 in quarter
  // steps. Finer moves can bring the gripper closer to its goal on the last
  // move, and a policy that misreads the offset by a little moves a little
  // wrong instead of half a step wrong. At least 2: the rounded moves are
  // both zero only within sqrt(2) / (2 * move_divisions) steps of the goal,
  // which must lie inside the arrival distance (0.375 steps). At most 16, so
  // that each move stays common enough in the demonstrations to be learnt.
  int move_divisions = 2;
};

// Closing the gripper grasps a block whose centre is this close to it
// (normalised units).
inline constexpr double kGraspReach = 0.05;

// The expert closes or opens the gripper once it is this close to its goal
// (normalised units); farther away it moves.
double ArriveDistance(const RobotWorldOptions& options = {});

// The expert opens the gripper over the plate once the block it carries is
// this close to the plate's centre (normalised units): release_steps steps.
double ReleaseDistance(const RobotWorldOptions& options = {});

// How close to its goal in `scene` the expert closes or opens the gripper:
// ReleaseDistance while it carries the named block to the plate, else
// ArriveDistance.
double GripDistance(const RobotScene& scene, const RobotWorldOptions& options = {});

// The colours of blocks and plates.
const std::vector<std::string>& TableColors();

// OK unless a scene of `options` cannot be built: INVALID_ARGUMENT when there
// are no blocks, no plates, or more objects than colours (instructions name
// objects by colour), when release_steps is below 0.375 or releases
// outside the plate's success disc, or when move_divisions is not 2-16.
absl::Status CheckOptions(const RobotWorldOptions& options);

RobotScene NewEpisode(uint64_t seed, const RobotWorldOptions& options = {});

// Top-down rendering (RGB).
cv::Mat RenderScene(const RobotScene& scene, const RobotWorldOptions& options = {});

// Applies a normalised 7-DoF action [dx, dy, dz, droll, dpitch, dyaw,
// gripper] with dx, dy in [-1, 1] (scaled by max_step; dz and rotations
// ignored) and gripper < 0.5 closing, >= 0.5 opening. Closing over a block
// grasps it; opening releases it where it is.
void Step(RobotScene* scene, const std::array<double, 7>& action, const RobotWorldOptions& options = {});

// The picked block rests on the target plate with the gripper open.
bool Success(const RobotScene& scene);

// How a closed-loop episode went: success, or the first thing that went
// wrong, so that policies can be compared beyond their success rate.
enum class EpisodeOutcome {
  kSucceeded,
  kNeverClosed,    // the gripper never closed
  kMissedGrasp,    // its first close grasped nothing
  kWrongBlock,     // its first close grasped another block
  kReleasedShort,  // it let the named block go off the plate
  kNeverReleased,  // it still holds the named block at the end
};

// "succeeded", "never closed", "missed grasp", "wrong block", "released
// short", "never released".
const char* OutcomeName(EpisodeOutcome outcome);

// Follows an episode step by step and names its outcome.
class EpisodeRecord {
 public:
  // One step: the scene before it and after it.
  void Observe(const RobotScene& before, const RobotScene& after);
  // The outcome, given the episode's last scene.
  EpisodeOutcome Outcome(const RobotScene& last) const;
  // For kMissedGrasp the gripper's distance from the named block's centre
  // where it closed; for kReleasedShort the block's distance from the
  // plate's centre where it was let go (normalised units); else NaN.
  double FailureDistance() const { return distance_; }

 private:
  bool closed_ = false;  // the gripper closed at least once
  bool failed_ = false;  // `failure_` holds the first failure
  EpisodeOutcome failure_ = EpisodeOutcome::kSucceeded;
  double distance_ = std::numeric_limits<double>::quiet_NaN();
};

// The expert's next action: go to the block, close, carry it to the plate,
// open (with RobotWorldOptions::grip_on_the_move, closing and opening come
// with the last move). From any other state it goes back to that plan (a
// gripper closed on nothing opens before it closes again). Values in
// [-1, 1] (gripper 0 or 1).
std::array<double, 7> ExpertAction(const RobotScene& scene, const RobotWorldOptions& options = {});

// The expert's whole path as HAMSTER waypoints: start, the block (gripper
// closes there), the plate (gripper opens there).
std::vector<vision::PathWaypoint> ExpertPath(const RobotScene& scene);

}  // namespace magma::worlds

#endif  // MAGMA_WORLDS_ROBOT_WORLD_H_
