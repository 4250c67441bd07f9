// The tabletop world's command-line flags, shared by magma-train (which
// trains on the expert's actions) and magma-eval (which runs episodes in the
// same world and prints the expert's action beside the model's): an
// evaluation must describe the world and the expert a model was trained on.
#ifndef MAGMA_TOOLS_TABLE_FLAGS_H_
#define MAGMA_TOOLS_TABLE_FLAGS_H_

#include "absl/status/statusor.h"
#include "magma/worlds/robot_world.h"

namespace magma::tools {

// --table_blocks, --table_plates, --grip_on_the_move, --release_steps and
// --move_divisions as world options, checked (worlds::CheckOptions).
absl::StatusOr<worlds::RobotWorldOptions> TableWorldFromFlags();

}  // namespace magma::tools

#endif  // MAGMA_TOOLS_TABLE_FLAGS_H_
