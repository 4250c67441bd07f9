#include "magma/train/synthetic_tasks.h"

#include <map>
#include <random>

#include <ATen/ATen.h>

#include "absl/strings/str_cat.h"
#include "magma/agent/path_answer.h"
#include "magma/tokenizer/chat.h"

namespace magma::train {
namespace {

model::TrainImage ToTrainImage(const vision::Crops& c) {
  at::Tensor crops = at::from_blob(const_cast<float*>(c.pixels.data()), {c.num_crops(), 3, c.base, c.base}, at::kFloat).clone();
  return {crops, c.grid.rows, c.grid.cols};
}

}  // namespace

SyntheticTasks::SyntheticTasks(const agent::TaskContext* ctx, const worlds::UiWorldOptions& ui,
                               const worlds::RobotWorldOptions& robot)
    : ctx_(ctx), ui_(ui), robot_(robot) {}

absl::StatusOr<model::TrainExample> SyntheticTasks::ToExample(const engine::GenerationRequest& r,
                                                              const std::string& answer) const {
  model::TrainExample e;
  e.prompt_ids.assign(r.prompt_ids.begin(), r.prompt_ids.end());
  for (const auto& img : r.images) e.images.push_back(ToTrainImage(*img.crops));
  if (!answer.empty()) {
    auto ids = ctx_->tokenizer->Encode(answer);
    if (!ids.ok()) return ids.status();
    e.target_ids.assign(ids->begin(), ids->end());
  }
  if (!ctx_->stop_ids.empty()) e.target_ids.push_back(ctx_->stop_ids.back());  // end of turn
  return e;
}

absl::StatusOr<SyntheticExample> SyntheticTasks::Click(uint64_t seed) const {
  worlds::UiScreen screen = worlds::RenderScreen(seed, ui_);
  const auto instructions = worlds::Instructions(screen);
  if (instructions.empty()) return absl::NotFoundError("no unambiguous instruction on this screen");
  const auto& in = instructions[seed % instructions.size()];
  agent::ClickTask task;
  task.screenshot = screen.rgb;
  task.instruction = in.text;
  for (const auto& w : screen.widgets) task.boxes.push_back(w.box);
  task.constrain_to_marks = false;
  auto p = agent::PrepareClick(*ctx_, task);
  if (!p.ok()) return p.status();
  SyntheticExample out;
  out.kind = TaskKind::kClick;
  out.target_text = absl::StrCat("Mark: ", p->marks[in.target].id);
  auto e = ToExample(p->request, out.target_text);
  if (!e.ok()) return e.status();
  out.example = *std::move(e);
  return out;
}

absl::StatusOr<SyntheticExample> SyntheticTasks::Act(uint64_t seed) const {
  if (!ctx_->action_codec.has_value()) return absl::FailedPreconditionError("no action vocabulary");
  worlds::RobotScene scene = worlds::NewEpisode(seed, robot_);
  // Advance the expert a seeded number of steps so that every phase shows up.
  std::mt19937_64 rng(seed ^ 0x9e3779b97f4a7c15ull);
  const int steps = static_cast<int>(rng() % 20);
  for (int i = 0; i < steps && !worlds::Success(scene); ++i) worlds::Step(&scene, worlds::ExpertAction(scene, robot_), robot_);
  const auto action = worlds::ExpertAction(scene, robot_);
  agent::ActTask task;
  task.image = worlds::RenderScene(scene, robot_);
  task.instruction = scene.instruction;
  task.statistics = agent::ActionStatistics{{-1, -1, -1, -1, -1, -1, 0}, {1, 1, 1, 1, 1, 1, 1},
                                            {true, true, true, true, true, true, false}};
  auto p = agent::PrepareAct(*ctx_, task);
  if (!p.ok()) return p.status();
  std::vector<double> normalized(action.begin(), action.end());
  normalized[6] = normalized[6] * 2 - 1;  // gripper 0/1 -> -1/1
  const std::vector<int64_t> tokens = ctx_->action_codec->Encode(normalized);
  SyntheticExample out;
  out.kind = TaskKind::kAct;
  auto e = ToExample(p->request, "");
  if (!e.ok()) return e.status();
  e->target_ids.insert(e->target_ids.begin(), tokens.begin(), tokens.end());
  for (int64_t t : tokens) absl::StrAppend(&out.target_text, ctx_->action_codec->BinOfToken(t), " ");
  out.example = *std::move(e);
  return out;
}

absl::StatusOr<SyntheticExample> SyntheticTasks::Path(uint64_t seed) const {
  worlds::RobotScene scene = worlds::NewEpisode(seed, robot_);
  agent::TraceTask task;
  task.image = worlds::RenderScene(scene, robot_);
  task.instruction = scene.instruction;
  task.format = agent::TraceFormat::kHamsterPath;
  task.constrain_output = false;  // training needs the prompt, not the decoding grammar
  auto p = agent::PrepareTrace(*ctx_, task);
  if (!p.ok()) return p.status();
  SyntheticExample out;
  out.kind = TaskKind::kPath;
  out.target_text = agent::FormatPathAnswer(worlds::ExpertPath(scene));
  auto e = ToExample(p->request, out.target_text);
  if (!e.ok()) return e.status();
  out.example = *std::move(e);
  return out;
}

absl::StatusOr<SyntheticExample> SyntheticTasks::Question(uint64_t seed) const {
  worlds::UiScreen screen = worlds::RenderScreen(seed, ui_);
  std::mt19937_64 rng(seed * 31 + 7);
  std::string question, answer;
  const auto& w = screen.widgets[rng() % screen.widgets.size()];
  switch (rng() % 3) {
    case 0: {
      int n = 0;
      for (const auto& x : screen.widgets) n += x.kind == "button";
      question = "How many buttons are there?";
      answer = std::to_string(n);
      break;
    }
    case 1: {
      const bool yes = rng() % 2 == 0;
      std::string color = w.color;
      if (!yes) {
        const auto& colors = worlds::UiColors();
        for (const auto& [name, c] : colors) {
          bool used = false;
          for (const auto& x : screen.widgets) used = used || x.color == name;
          if (!used) {
            color = name;
            break;
          }
        }
      }
      question = "Is there a " + color + " " + w.kind + "?";
      bool present = false;
      for (const auto& x : screen.widgets) present = present || (x.color == color && x.kind == w.kind);
      answer = present ? "Yes." : "No.";
      break;
    }
    default: {
      if (w.label.empty()) {
        question = "What color is the " + w.shape + " icon?";
      } else {
        question = "What color is the " + w.label + " " + (w.kind == "text_field" ? "field" : w.kind) + "?";
      }
      answer = w.color;
      break;
    }
  }
  agent::TextTask task;
  task.images = {screen.rgb};
  task.messages = {{"user", {tokenizer::Untrusted(question)}}};
  auto r = agent::PrepareText(*ctx_, task);
  if (!r.ok()) return r.status();
  SyntheticExample out;
  out.kind = TaskKind::kQuestion;
  out.target_text = answer;
  auto e = ToExample(*r, answer);
  if (!e.ok()) return e.status();
  out.example = *std::move(e);
  return out;
}

absl::StatusOr<SyntheticExample> SyntheticTasks::Mixed(uint64_t seed) const {
  switch (seed % 10) {
    case 0: case 1: case 2: case 3: return Click(seed);
    case 4: case 5: case 6: return Act(seed);
    case 7: return Path(seed);
    default: return Question(seed);
  }
}

std::vector<std::string> SyntheticTasks::CorpusTexts(int screens) {
  std::vector<std::string> out = {tokenizer::kMagmaSystemPrompt, agent::HamsterPathPrompt("x"),
                                  "Answer the question briefly.", "How many buttons are there?", "Yes.", "No."};
  for (int i = 0; i < screens; ++i) {
    const auto s = worlds::RenderScreen(static_cast<uint64_t>(i));
    for (const auto& in : worlds::Instructions(s)) out.push_back(in.text);
    for (const auto& w : s.widgets) out.push_back("What color is the " + w.label + " " + w.kind + "? " + w.color);
    out.push_back(absl::StrCat("Mark: ", i % 12));
    const auto r = worlds::NewEpisode(static_cast<uint64_t>(i));
    out.push_back(r.instruction);
    out.push_back(agent::FormatPathAnswer(worlds::ExpertPath(r)));
  }
  for (const auto& seg : tokenizer::UiGroundingContent("x")) out.push_back(seg.text);
  for (const auto& seg : tokenizer::RobotActionContent("x")) out.push_back(seg.text);
  return out;
}

}  // namespace magma::train
