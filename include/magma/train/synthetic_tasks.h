// Training examples from the synthetic worlds, built with exactly the prompt
// builders, overlays and image preprocessing the server uses at inference
// (agent/tasks.h), so that a model trained on them is served as is.
#ifndef MAGMA_TRAIN_SYNTHETIC_TASKS_H_
#define MAGMA_TRAIN_SYNTHETIC_TASKS_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "magma/agent/tasks.h"
#include "magma/model/trainer.h"
#include "magma/worlds/robot_world.h"
#include "magma/worlds/ui_world.h"

namespace magma::train {

enum class TaskKind { kClick, kAct, kPath, kQuestion };

// Relative weights of the task kinds in a training stream.
struct TaskMix {
  int click = 4, act = 3, path = 1, question = 2;
};

// "click=4,act=3,path=1,question=2" (kinds left out get 0).
absl::StatusOr<TaskMix> ParseTaskMix(const std::string& text);

struct SyntheticExample {
  TaskKind kind = TaskKind::kClick;
  model::TrainExample example;
  std::string target_text;  // what the target ids spell (actions: their bins)
  // Act: the gripper holds the block to be placed (the goal is the plate).
  bool carrying = false;
};

// What the tower's cell targets name, and in which cells.
struct CellTargetOptions {
  // The mark cell head names a marked widget's mark in the widget's cells
  // too, not only in its mark label's.
  bool marks_on_things = true;
  // The label cell head names a widget's label only in the cells its text
  // is drawn in; the widget's other cells are left out of that head's loss.
  bool labels_on_text = false;
  // Every cell of a tabletop frame (act and path) also regresses where the
  // gripper is from the cell's centre, in cells within +-2 (a third offset
  // item). The cells of a thing near the gripper then hold the thing's and
  // the gripper's offsets from the same centre, whose difference is the
  // move, without the tower knowing where either is in the frame. (Path
  // frames show the gripper where episodes start, so theirs is the same
  // target in every scene.)
  bool gripper_from_cells = false;
};

// How robot frames are drawn (SyntheticTasks::Act). The defaults are the
// stream the shipped model was trained on.
struct ActFrameOptions {
  // Quarters of the frames (1-3) whose gripper, with what it holds, is moved
  // to within two steps per axis of its goal, where a fraction of a step
  // decides between moving on, grasping and releasing. Another quarter puts
  // it anywhere on the table; the rest stay where the expert's episode left
  // it.
  int near_goal_quarters = 1;
  // Quarters (0-4) of those near-goal frames with nothing held whose gripper
  // is closed on nothing, as after a grasp a little off the block (the
  // expert opens it). Frames elsewhere show it in one quarter.
  int missed_grasp_quarters = 1;
  // Quarters (0-4) of the near-goal frames whose gripper is put within the
  // expert's arrival distance of the goal instead, where the expert closes
  // or opens the gripper rather than moving it: without them such frames
  // are rare (a few in 100 robot frames).
  int arrival_quarters = 0;
};

// How question examples are supervised (SyntheticTasks::Question).
struct QuestionOptions {
  // A question about nothing on the screen ("is there a red button?" with
  // none there) gives its pointer the prompt's first token to rest on
  // (TrainPointer::sink) and the words that name what is asked about;
  // otherwise it has no pointer. Where the head then looks says whether
  // the thing is there.
  bool absent_to_start = false;
};

class SyntheticTasks {
 public:
  // `ctx` must outlive this object.
  SyntheticTasks(const agent::TaskContext* ctx, const worlds::UiWorldOptions& ui,
                 const worlds::RobotWorldOptions& robot, const CellTargetOptions& cells = {},
                 const ActFrameOptions& act = {}, const QuestionOptions& questions = {});

  // A Set-of-Mark screen and an instruction; target "Mark: N".
  absl::StatusOr<SyntheticExample> Click(uint64_t seed) const;
  // A tabletop frame somewhere along the expert's episode; target the
  // expert's 7 action tokens then the end token. Its offsets (for the
  // offset read-out) say where the goal is from the gripper, per axis in
  // steps within +-2, at the x, y and gripper tokens.
  absl::StatusOr<SyntheticExample> Act(uint64_t seed) const;
  // A tabletop scene; target the expert's HAMSTER path answer.
  absl::StatusOr<SyntheticExample> Path(uint64_t seed) const;
  // A question about a UI screen (worlds::AskAbout: counts, yes/no, colours,
  // what is at a mark).
  absl::StatusOr<SyntheticExample> Question(uint64_t seed) const;

  // One example of a kind chosen by the seed, in the proportions of `mix`.
  absl::StatusOr<SyntheticExample> Mixed(uint64_t seed, const TaskMix& mix = {}) const;

  // Classes of the tower's cell heads (TrainOptions::cell_classes) that
  // every example's images carry targets for (TrainImage::cell_classes).
  static const std::vector<int64_t>& CellClasses();
  // The entry of CellClasses() that names Set-of-Mark ids.
  static constexpr int kMarkCellHead = 1;
  // The entry that names widget labels.
  static constexpr int kLabelCellHead = 2;
  // Classes of the look read-outs (TrainOptions::look_classes) that
  // question pointers about one widget carry (TrainPointer::looks): its
  // kind, shape and colour as the "what" cell head names them, and its
  // label as the label cell head does.
  static const std::vector<int64_t>& LookClasses();
  // The first look class of a robot frame's gripper pointer (the gripper
  // head's): the gripper open or closed.
  static int64_t GripperLook(bool open);
  // Items per cell with regressed offsets (TrainOptions::cell_offset_items):
  // the thing in the cell and the overlay on it (the gripper, a mark label),
  // and with `gripper_from_cells` the gripper seen from the cell.
  static int CellOffsetItems(const CellTargetOptions& cells);

  // Texts that appear in prompts and answers (for training a tokenizer).
  static std::vector<std::string> CorpusTexts(int screens);

 private:
  absl::StatusOr<model::TrainExample> ToExample(const engine::GenerationRequest& request,
                                                const std::string& answer) const;
  const agent::TaskContext* ctx_;
  worlds::UiWorldOptions ui_;
  worlds::RobotWorldOptions robot_;
  CellTargetOptions cells_;
  ActFrameOptions act_;
  QuestionOptions questions_;
};

}  // namespace magma::train

#endif  // MAGMA_TRAIN_SYNTHETIC_TASKS_H_
