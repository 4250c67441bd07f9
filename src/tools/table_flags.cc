#include "table_flags.h"

#include "absl/flags/flag.h"
#include "absl/status/status.h"

ABSL_FLAG(int, table_blocks, 3, "Tabletop world: blocks per scene");
ABSL_FLAG(int, table_plates, 2, "Tabletop world: plates per scene");
ABSL_FLAG(bool, grip_on_the_move, false,
          "Tabletop expert (the actions magma-train trains on and magma-eval --log_episodes prints): it closes and "
          "opens the gripper with the move that brings it to its goal, not on a still step after it");
ABSL_FLAG(double, release_steps, 0.375,
          "Tabletop expert: it opens the gripper once the carried block is this many steps (of 0.08) from the "
          "plate's centre (at least 0.375, below 0.8)");
ABSL_FLAG(int, move_divisions, 2,
          "Tabletop expert: its move per axis is a multiple of 1/N of a step (of 0.08), N this value: 2 half "
          "steps, 4 quarter steps; 2-16");

namespace magma::tools {

absl::StatusOr<worlds::RobotWorldOptions> TableWorldFromFlags() {
  worlds::RobotWorldOptions o;
  o.blocks = absl::GetFlag(FLAGS_table_blocks);
  o.plates = absl::GetFlag(FLAGS_table_plates);
  o.grip_on_the_move = absl::GetFlag(FLAGS_grip_on_the_move);
  o.release_steps = absl::GetFlag(FLAGS_release_steps);
  o.move_divisions = absl::GetFlag(FLAGS_move_divisions);
  if (absl::Status s = worlds::CheckOptions(o); !s.ok()) return s;
  return o;
}

}  // namespace magma::tools
