#include "magma/train/synthetic_tasks.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <map>
#include <optional>
#include <random>

#include <ATen/ATen.h>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "magma/agent/path_answer.h"
#include "magma/tokenizer/chat.h"
#include "magma/tokenizer/tokenizer.h"

namespace magma::train {
namespace {

model::TrainImage ToTrainImage(const vision::Crops& c) {
  at::Tensor crops = at::from_blob(const_cast<float*>(c.pixels.data()), {c.num_crops(), 3, c.base, c.base}, at::kFloat).clone();
  return {crops, c.grid.rows, c.grid.cols};
}

// The path with its coordinates rounded to two decimals, as HAMSTER writes
// them: the model learns numbers it can read off the image, not the
// simulator's full-precision digits.
std::vector<vision::PathWaypoint> TwoDecimals(std::vector<vision::PathWaypoint> path) {
  for (auto& w : path) {
    w.point.x = std::round(w.point.x * 100) / 100;
    w.point.y = std::round(w.point.y * 100) / 100;
  }
  return path;
}

// Something drawn on an image, as the tower's cell heads should see it.
struct CellItem {
  vision::PixelBox box;  // original pixels
  double cx = 0, cy = 0; // its centre
  int what = 0;          // class of the "what" head (kWhat* below)
  int mark = 0;          // 0 none, 1 + Set-of-Mark id
  int text = 0;          // 0 none, 1 + index in UiLabels()
  // Where that text is drawn, when the label head names it only there.
  std::optional<vision::PixelBox> text_box;
  int pointer = -1;      // the pointer group it belongs to (-1: none)
  // Drawn over things rather than a thing itself: the gripper, a mark label.
  bool overlay = false;
  // Every cell regresses where this item is from it (the gripper, with
  // CellTargetOptions::gripper_from_cells).
  bool seen_from_every_cell = false;
};

// Classes of the "what" cell head: none, then the UI looks (kind and shape)
// x 8 colours, 6 block colours, 6 plate colours, the gripper open and
// closed, and last a Set-of-Mark label.
const std::vector<std::string>& UiLooks() {
  static const std::vector<std::string> kLooks = {"button rectangle", "button rounded", "icon rectangle",
                                                  "icon circle",      "checkbox rectangle", "text_field rectangle"};
  return kLooks;
}
constexpr int kWhatUi = 1;
constexpr int kWhatBlock = kWhatUi + 6 * 8;
constexpr int kWhatPlate = kWhatBlock + 6;
constexpr int kWhatGripperOpen = kWhatPlate + 6;
constexpr int kWhatGripperClosed = kWhatGripperOpen + 1;
constexpr int kWhatMarkLabel = kWhatGripperClosed + 1;
constexpr int kWhatClasses = kWhatMarkLabel + 1;

int IndexOf(const std::vector<std::string>& names, const std::string& name) {
  for (size_t i = 0; i < names.size(); ++i) {
    if (names[i] == name) return static_cast<int>(i);
  }
  return -1;
}

int ColorIndex(const std::string& name) {
  const auto& colors = worlds::UiColors();
  for (size_t i = 0; i < colors.size(); ++i) {
    if (colors[i].first == name) return static_cast<int>(i);
  }
  return 0;
}

// The classes of the "what" and label cell heads for a widget.
int WidgetWhat(const worlds::UiWidget& w) {
  return kWhatUi + std::max(0, IndexOf(UiLooks(), w.kind + " " + w.shape)) * 8 + ColorIndex(w.color);
}
int WidgetText(const worlds::UiWidget& w) {
  return w.label.empty() ? 0 : 1 + std::max(0, IndexOf(worlds::UiLabels(), w.label));
}

// The labels of `marks` (when marked; overlays) and the widgets of `screen`
// (with their marks and labels where `cells` says).
std::vector<CellItem> UiItems(const worlds::UiScreen& screen, const std::vector<vision::Mark>& marks,
                              const std::vector<int>& about, const CellTargetOptions& cells) {
  const bool marked = !marks.empty();
  std::vector<CellItem> items;
  for (size_t i = 0; i < marks.size() && i < screen.widgets.size(); ++i) {
    CellItem item;
    const auto& l = marks[i].label;
    item.box = {l.x1, l.y1, l.x2, l.y2};
    item.cx = (l.x1 + l.x2) / 2;
    item.cy = (l.y1 + l.y2) / 2;
    item.what = kWhatMarkLabel;
    item.overlay = true;
    item.mark = marks[i].id >= 0 && marks[i].id < 10 ? 1 + marks[i].id : 0;
    if (std::find(about.begin(), about.end(), static_cast<int>(i)) != about.end()) item.pointer = 0;
    items.push_back(item);
  }
  for (size_t i = 0; i < screen.widgets.size(); ++i) {
    const auto& w = screen.widgets[i];
    CellItem item;
    item.box = w.box;
    item.cx = (w.box.x1 + w.box.x2) / 2;
    item.cy = (w.box.y1 + w.box.y2) / 2;
    item.what = WidgetWhat(w);
    item.mark = cells.marks_on_things && marked && i < 10 ? 1 + static_cast<int>(i) : 0;
    item.text = WidgetText(w);
    if (cells.labels_on_text && item.text > 0) item.text_box = w.text;
    if (std::find(about.begin(), about.end(), static_cast<int>(i)) != about.end()) item.pointer = 0;
    items.push_back(item);
  }
  return items;
}

std::vector<CellItem> TableItems(const worlds::RobotScene& scene, int size, const std::vector<int>& groups,
                                 const CellTargetOptions& cells) {
  // The gripper (an overlay), then blocks before plates: a block on a plate
  // is the thing in its cells. Pointer group k is object groups[k] (-1: the
  // gripper).
  std::vector<CellItem> items;
  auto add = [&](const vision::NormPoint& c, double half, int what, int index) {
    CellItem item;
    const auto g = std::find(groups.begin(), groups.end(), index);
    if (g != groups.end()) item.pointer = static_cast<int>(g - groups.begin());
    item.cx = c.x * size;
    item.cy = c.y * size;
    item.box = {item.cx - half * size, item.cy - half * size, item.cx + half * size, item.cy + half * size};
    item.what = what;
    items.push_back(item);
  };
  add(scene.gripper, 0.03, scene.gripper_open ? kWhatGripperOpen : kWhatGripperClosed, -1);
  items.back().overlay = true;
  items.back().seen_from_every_cell = cells.gripper_from_cells;
  for (size_t i = 0; i < scene.objects.size(); ++i) {
    const auto& o = scene.objects[i];
    if (o.kind == "block") add(o.center, o.radius, kWhatBlock + std::max(0, IndexOf(worlds::TableColors(), o.color)), static_cast<int>(i));
  }
  for (size_t i = 0; i < scene.objects.size(); ++i) {
    const auto& o = scene.objects[i];
    if (o.kind == "plate") add(o.center, o.radius, kWhatPlate + std::max(0, IndexOf(worlds::TableColors(), o.color)), static_cast<int>(i));
  }
  return items;
}

// Whether the cell at (x0, y0) of size w x h holds text drawn in `box`: the
// text's middle row crosses it and it covers the text's middle or its centre
// column meets the text.
bool Meets(const vision::PixelBox& box, double x0, double y0, double w, double h) {
  const double mx = (box.x1 + box.x2) / 2, my = (box.y1 + box.y2) / 2, x = x0 + w / 2;
  return my >= y0 && my < y0 + h && ((mx >= x0 && mx < x0 + w) || (x >= box.x1 && x <= box.x2));
}

// How far, in cells per axis, a cell regresses where the item seen from
// every cell is (CellItem::seen_from_every_cell); farther is clamped.
constexpr double kSeenFromCellsReach = 2.0;

// Targets of every tower output cell of `img` (crops of an image of `size`
// on its any-res grid), in two slots: the thing in the cell (a widget, a
// block, a plate) and the overlay on it (the gripper, a mark label), each
// the first whose centre falls in the cell, else the first whose box holds
// the cell's centre. The "what" head names the thing, with its label; the
// overlay head the overlay; the mark head the overlay's mark, else the
// thing's. Each slot regresses the offset of its item's centre from the
// cell's, in cells, so that every cell of a large item says where the item
// is, and a block under the gripper does not vanish from its cells: the
// thing's position stays in one slot and the gripper's in the other. A third
// slot, on every cell, holds the offset of the item seen from every cell
// (kSeenFromCellsReach cells at most per axis), when there is one.
// Returns, per pointer group, the cells that hold the centre of one of its
// items or whose centre lies in one of its items' boxes.
std::vector<at::Tensor> AttachCellTargets(const std::vector<CellItem>& items, cv::Size size, model::TrainImage* img) {
  const int64_t s = img->crops.size(2), f = s / 32, crops = img->crops.size(0);
  const auto heads = static_cast<int64_t>(SyntheticTasks::CellClasses().size());
  at::Tensor classes = at::zeros({crops, f, f, heads}, at::kLong);
  const auto seen =
      std::find_if(items.begin(), items.end(), [](const CellItem& it) { return it.seen_from_every_cell; });
  const int64_t offset_items = seen != items.end() ? 3 : 2;
  at::Tensor offsets = at::full({crops, f, f, 2 * offset_items}, std::numeric_limits<float>::quiet_NaN());
  int groups = 0;
  for (const auto& it : items) groups = std::max(groups, it.pointer + 1);
  std::vector<at::Tensor> pointers;
  for (int g = 0; g < groups; ++g) pointers.push_back(at::zeros({crops, f, f}, at::kBool));
  std::vector<at::TensorAccessor<bool, 3>> marks;
  for (auto& p : pointers) marks.push_back(p.accessor<bool, 3>());
  auto c = classes.accessor<int64_t, 4>();
  auto o = offsets.accessor<float, 4>();
  const double sx = static_cast<double>(size.width) / (img->cols * s);
  const double sy = static_cast<double>(size.height) / (img->rows * s);
  const double cell_w = 32 * sx, cell_h = 32 * sy;
  for (int r = 0; r < img->rows; ++r) {
    for (int q = 0; q < img->cols; ++q) {
      const int64_t n = r * img->cols + q;
      for (int64_t i = 0; i < f; ++i) {
        for (int64_t j = 0; j < f; ++j) {
          const double x0 = (q * s + j * 32) * sx, y0 = (r * s + i * 32) * sy;
          const double x = x0 + cell_w / 2, y = y0 + cell_h / 2;
          auto centre_here = [&](const CellItem& it) {
            return it.cx >= x0 && it.cx < x0 + cell_w && it.cy >= y0 && it.cy < y0 + cell_h;
          };
          auto covers_cell = [&](const CellItem& it) {
            return x >= it.box.x1 && x <= it.box.x2 && y >= it.box.y1 && y <= it.box.y2;
          };
          for (const auto& it : items) {
            if (it.pointer >= 0 && (centre_here(it) || covers_cell(it))) marks[it.pointer][n][i][j] = true;
          }
          const CellItem* slot[2] = {nullptr, nullptr};  // thing, overlay
          for (int k = 0; k < 2; ++k) {
            auto first_in_slot = [&](const auto& test) {
              return std::find_if(items.begin(), items.end(),
                                  [&](const CellItem& it) { return it.overlay == (k == 1) && test(it); });
            };
            auto found = first_in_slot(centre_here);
            if (found == items.end()) found = first_in_slot(covers_cell);
            if (found != items.end()) slot[k] = &*found;
          }
          const CellItem *thing = slot[0], *overlay = slot[1];
          if (thing != nullptr) {
            c[n][i][j][0] = thing->what;
            c[n][i][j][2] = thing->text_box && !Meets(*thing->text_box, x0, y0, cell_w, cell_h) ? -1 : thing->text;
          }
          if (overlay != nullptr) c[n][i][j][3] = overlay->what;
          c[n][i][j][SyntheticTasks::kMarkCellHead] = overlay != nullptr && overlay->mark > 0 ? overlay->mark : thing != nullptr ? thing->mark : 0;
          for (int k = 0; k < 2; ++k) {
            if (slot[k] == nullptr) continue;
            o[n][i][j][2 * k] = static_cast<float>((slot[k]->cx - x) / cell_w);
            o[n][i][j][2 * k + 1] = static_cast<float>((slot[k]->cy - y) / cell_h);
          }
          if (seen != items.end()) {
            o[n][i][j][4] =
                static_cast<float>(std::clamp((seen->cx - x) / cell_w, -kSeenFromCellsReach, kSeenFromCellsReach));
            o[n][i][j][5] =
                static_cast<float>(std::clamp((seen->cy - y) / cell_h, -kSeenFromCellsReach, kSeenFromCellsReach));
          }
        }
      }
    }
  }
  img->cell_classes = classes;
  img->cell_offsets = offsets;
  return pointers;
}

// The text `ids` decode to, without the space clean-up (the offsets are into
// the target text as written); `ends` receives where each token ends in it.
std::string DecodeWithEnds(const tokenizer::Tokenizer& tok, const std::vector<int64_t>& ids, std::vector<size_t>* ends) {
  std::string text;
  tokenizer::IncrementalDecoder decoder(&tok, /*skip_special=*/true, /*clean_up_spaces=*/false);
  for (int64_t id : ids) {
    text += decoder.Push(static_cast<int32_t>(id));
    ends->push_back(text.size());
  }
  return text;
}

// The tokens (first, count) that meet the characters [from, to) of a text
// whose tokens end at `ends`; count 0 if none does.
std::pair<int64_t, int64_t> TokensMeeting(const std::vector<size_t>& ends, size_t from, size_t to) {
  int64_t first = -1, last = -1;
  size_t begin = 0;
  for (size_t k = 0; k < ends.size(); ++k) {
    if (ends[k] > from && begin < to) {  // token k covers [begin, ends[k])
      if (first < 0) first = static_cast<int64_t>(k);
      last = static_cast<int64_t>(k);
    }
    begin = ends[k];
  }
  return first < 0 ? std::make_pair(int64_t{0}, int64_t{0}) : std::make_pair(first, last - first + 1);
}

// The target tokens (first, count) that spell each `open`...`close` part of
// `text` (which `ids` spell, perhaps followed by an end token), in order.
std::vector<std::pair<int64_t, int64_t>> TokenSpans(const tokenizer::Tokenizer& tok, const std::vector<int64_t>& ids,
                                                    const std::string& text, char open, char close) {
  std::vector<size_t> ends;  // ASCII answers: no byte is held back
  DecodeWithEnds(tok, ids, &ends);
  std::vector<std::pair<int64_t, int64_t>> spans;
  for (size_t at = text.find(open); at != std::string::npos; at = text.find(open, at + 1)) {
    const size_t end = text.find(close, at);
    if (end == std::string::npos) break;
    const auto span = TokensMeeting(ends, at, end + 1);
    if (span.second > 0) spans.push_back(span);
  }
  return spans;
}

// Indices of the tokens of `ids` (a prompt) that spell the last occurrence of
// `phrase` in its text, or only its first `length` characters (empty if it
// does not occur).
std::vector<int64_t> WordTokens(const tokenizer::Tokenizer& tok, const std::vector<int64_t>& ids,
                                const std::string& phrase, size_t length = std::string::npos) {
  std::vector<size_t> ends;
  const std::string text = DecodeWithEnds(tok, ids, &ends);
  std::vector<int64_t> out;
  const size_t at = phrase.empty() ? std::string::npos : text.rfind(phrase);
  if (at == std::string::npos) return out;
  const auto [first, count] = TokensMeeting(ends, at, at + std::min(length, phrase.size()));
  for (int64_t k = first; k < first + count; ++k) out.push_back(k);
  return out;
}

std::string NameOf(const worlds::TableObject& o) { return o.color + " " + o.kind; }

// The prompt tokens that tell `o` apart from the other things on the table:
// its colour in "put the red block on the blue plate" (a scene has one
// thing per colour).
std::vector<int64_t> NamingTokens(const tokenizer::Tokenizer& tok, const std::vector<int64_t>& ids,
                                  const worlds::TableObject& o) {
  return WordTokens(tok, ids, NameOf(o), o.color.size());
}

// The query head that points at the gripper in robot frames: with the
// embedded model's 4 query heads on 2 key/value heads, head 2 reads other
// keys and values than the goal's head 0, so the goal's keys need not also
// tell where the gripper is.
constexpr int kGripperHead = 2;

// A pointer of `head` to the cells of pointer group `group` over the whole
// answer (image 0 of the example), whose item is at `where` (fractions of the
// image).
void PointAll(const std::vector<at::Tensor>& groups, int head, int group, const vision::NormPoint& where,
              model::TrainExample* e, std::vector<int64_t> words = {}) {
  if (group >= static_cast<int>(groups.size())) return;
  model::TrainPointer p;
  p.head = head;
  p.cells = {groups[group]};
  p.x = where.x;
  p.y = where.y;
  p.words = std::move(words);
  e->pointers.push_back(std::move(p));
}

}  // namespace

int SyntheticTasks::CellOffsetItems(const CellTargetOptions& cells) { return cells.gripper_from_cells ? 3 : 2; }

int64_t SyntheticTasks::GripperLook(bool open) { return open ? kWhatGripperOpen : kWhatGripperClosed; }

const std::vector<int64_t>& SyntheticTasks::CellClasses() {
  // what thing (kWhat*), Set-of-Mark id (none, 0..9), widget label (none,
  // 20), what overlay (kWhat*: the gripper open or closed, a mark label).
  static const std::vector<int64_t> kClasses = {kWhatClasses, 11, 21, kWhatClasses};
  return kClasses;
}

const std::vector<int64_t>& SyntheticTasks::LookClasses() {
  static const std::vector<int64_t> kClasses = {CellClasses()[0], CellClasses()[kLabelCellHead]};
  return kClasses;
}

SyntheticTasks::SyntheticTasks(const agent::TaskContext* ctx, const worlds::UiWorldOptions& ui,
                               const worlds::RobotWorldOptions& robot, const CellTargetOptions& cells,
                               const ActFrameOptions& act, const QuestionOptions& questions)
    : ctx_(ctx), ui_(ui), robot_(robot), cells_(cells), act_(act), questions_(questions) {}

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
  const auto& box = screen.widgets[in.target].box;
  const vision::NormPoint centre{(box.x1 + box.x2) / 2 / screen.rgb.cols, (box.y1 + box.y2) / 2 / screen.rgb.rows};
  PointAll(AttachCellTargets(UiItems(screen, p->marks, {in.target}, cells_), screen.rgb.size(), &e->images[0]), 0, 0,
           centre, &*e, WordTokens(*ctx_->tokenizer, e->prompt_ids, in.names));
  // The number the answer names, for the pointer's mark read-out.
  if (!e->pointers.empty()) e->pointers.back().mark = p->marks[in.target].id;
  out.example = *std::move(e);
  return out;
}

absl::StatusOr<SyntheticExample> SyntheticTasks::Act(uint64_t seed) const {
  if (!ctx_->action_codec.has_value()) return absl::FailedPreconditionError("no action vocabulary");
  worlds::RobotScene scene = worlds::NewEpisode(seed, robot_);
  // Advance the expert a seeded number of steps so that every phase shows up.
  // In half of the episodes its actions are perturbed (noise on the motion,
  // now and then a wrong gripper command), so that the frames also show the
  // states a learned policy drifts into - a missed grasp, a block dropped on
  // the way - labelled with the expert's way back.
  std::mt19937_64 rng(seed ^ 0x9e3779b97f4a7c15ull);
  const int steps = static_cast<int>(rng() % 24);
  const bool perturbed = rng() % 2 == 0;
  std::normal_distribution<double> noise(0.0, 0.6);
  std::uniform_real_distribution<double> unit(0.0, 1.0);
  for (int i = 0; i < steps && !worlds::Success(scene); ++i) {
    auto a = worlds::ExpertAction(scene, robot_);
    if (perturbed) {
      a[0] += noise(rng);
      a[1] += noise(rng);
      if (unit(rng) < 0.15) a[6] = 1 - a[6];
    }
    worlds::Step(&scene, a, robot_);
  }
  if (worlds::Success(scene)) scene = worlds::NewEpisode(seed, robot_);
  // In some frames the gripper (with what it holds) is then moved: anywhere
  // on the table in a quarter, near its goal (within two steps per axis) in
  // ActFrameOptions::near_goal_quarters others. Expert episodes all start
  // at the same spot and head the same way, so a policy could learn "go up"
  // without looking at the gripper; the expert labels any state, and
  // scattered states make the action depend on where the gripper is and
  // cover the places a learned policy overshoots to. Near the goal a
  // fraction of a step decides between moving on, grasping and releasing,
  // and a wrong guess there costs the episode.
  // The goal: the block to pick, or the plate while carrying.
  const int goal = scene.held == scene.pick ? scene.place : scene.pick;
  // One draw of four decides, so that the default options keep the stream
  // of the shipped model: 2 is anywhere, 3 (then 0, then 1) near the goal.
  constexpr int kAnywhere = 2;
  const int where = static_cast<int>(rng() % 4);
  const bool near_goal =
      where == 3 || (where == 0 && act_.near_goal_quarters >= 2) || (where == 1 && act_.near_goal_quarters >= 3);
  if (where == kAnywhere || near_goal) {
    std::uniform_real_distribution<double> place(0.02, 0.98);
    if (where == kAnywhere) {
      scene.gripper = {place(rng), place(rng)};
    } else {
      std::uniform_real_distribution<double> offset(-2 * robot_.max_step, 2 * robot_.max_step);
      const vision::NormPoint g = scene.objects[goal].center;
      scene.gripper = {std::clamp(g.x + offset(rng), 0.02, 0.98), std::clamp(g.y + offset(rng), 0.02, 0.98)};
      // No draw at all with the default 0, which keeps the shipped stream.
      if (act_.arrival_quarters > 0 && static_cast<int>(rng() % 4) < act_.arrival_quarters) {
        // Uniform over the disc inside the arrival distance (a little
        // inside it, clear of the expert's threshold).
        const double r = 0.95 * worlds::GripDistance(scene, robot_) * std::sqrt(unit(rng));
        const double angle = 2 * M_PI * unit(rng);
        scene.gripper = {std::clamp(g.x + r * std::cos(angle), 0.0, 1.0),
                         std::clamp(g.y + r * std::sin(angle), 0.0, 1.0)};
      }
    }
    if (scene.held >= 0) scene.objects[scene.held].center = scene.gripper;
  }
  // In some frames with nothing held the gripper is closed on nothing, as
  // after a grasp a little off the block: the expert opens it.
  if (scene.held < 0 && static_cast<int>(rng() % 4) < (near_goal ? act_.missed_grasp_quarters : 1)) {
    scene.gripper_open = false;
  }
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
  out.carrying = scene.held == scene.pick;
  auto e = ToExample(p->request, "");
  if (!e.ok()) return e.status();
  // Head 0 looks at the goal, head kGripperHead at the gripper: the action
  // is their difference.
  const auto groups =
      AttachCellTargets(TableItems(scene, robot_.image_size, {goal, -1}, cells_), task.image.size(), &e->images[0]);
  PointAll(groups, 0, 0, scene.objects[goal].center, &*e,
           NamingTokens(*ctx_->tokenizer, e->prompt_ids, scene.objects[goal]));
  PointAll(groups, kGripperHead, 1, scene.gripper, &*e);
  // What the gripper head reads there names the gripper's state, open or
  // closed (the first look read-out, in the "what" cell head's classes).
  if (!e->pointers.empty() && e->pointers.back().head == kGripperHead) {
    e->pointers.back().looks = {GripperLook(scene.gripper_open)};
  }
  // Where the goal is from the gripper, per axis in steps (within two, past
  // which every move is a full step), for the offset read-out where the
  // model decides the move (x, y) and the gripper.
  const double sx = std::clamp((scene.objects[goal].center.x - scene.gripper.x) / robot_.max_step, -2.0, 2.0);
  const double sy = std::clamp((scene.objects[goal].center.y - scene.gripper.y) / robot_.max_step, -2.0, 2.0);
  for (int64_t token : {0, 1, 6}) e->offsets.push_back({token, sx, sy});
  e->target_ids.insert(e->target_ids.begin(), tokens.begin(), tokens.end());
  for (size_t i = 0; i < tokens.size() && i < task.statistics->mask.size(); ++i) {
    if (task.statistics->mask[i]) e->ordered_targets.push_back(static_cast<int64_t>(i));
  }
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
  out.target_text = agent::FormatPathAnswer(TwoDecimals(worlds::ExpertPath(scene)));
  auto e = ToExample(p->request, out.target_text);
  if (!e.ok()) return e.status();
  // Head 0, while the model writes a waypoint "(x, y)", looks at what is
  // there: the gripper, the block, the plate.
  const auto groups = AttachCellTargets(TableItems(scene, robot_.image_size, {-1, scene.pick, scene.place}, cells_),
                                        task.image.size(), &e->images[0]);
  const auto spans = TokenSpans(*ctx_->tokenizer, e->target_ids, out.target_text, '(', ')');
  for (size_t k = 0; k < spans.size() && k < groups.size(); ++k) {
    model::TrainPointer ptr;
    ptr.head = 0;
    ptr.first = spans[k].first;
    ptr.count = spans[k].second;
    ptr.cells = {groups[k]};
    const vision::NormPoint at = k == 0 ? scene.gripper : scene.objects[k == 1 ? scene.pick : scene.place].center;
    ptr.x = at.x;
    ptr.y = at.y;
    if (k > 0) {
      ptr.words = NamingTokens(*ctx_->tokenizer, e->prompt_ids, scene.objects[k == 1 ? scene.pick : scene.place]);
    }
    e->pointers.push_back(std::move(ptr));
  }
  out.example = *std::move(e);
  return out;
}

absl::StatusOr<SyntheticExample> SyntheticTasks::Question(uint64_t seed) const {
  worlds::UiScreen screen = worlds::RenderScreen(seed, ui_);
  const worlds::UiQuestion q = worlds::AskAbout(screen, seed);
  agent::TextTask task;
  std::vector<vision::Mark> marks;
  if (q.with_marks) {
    auto marked = worlds::MarkScreen(screen, &marks);
    if (!marked.ok()) return marked.status();
    task.images = {*std::move(marked)};
  } else {
    task.images = {screen.rgb};
  }
  task.messages = {{"user", {tokenizer::Untrusted(q.question)}}};
  auto r = agent::PrepareText(*ctx_, task);
  if (!r.ok()) return r.status();
  SyntheticExample out;
  out.kind = TaskKind::kQuestion;
  out.target_text = q.answer;
  auto e = ToExample(*r, q.answer);
  if (!e.ok()) return e.status();
  // A question may be about several things: no one position to read.
  const vision::NormPoint nowhere{std::numeric_limits<double>::quiet_NaN(), std::numeric_limits<double>::quiet_NaN()};
  const auto groups = AttachCellTargets(UiItems(screen, marks, q.about, cells_), screen.rgb.size(), &e->images[0]);
  std::vector<int64_t> words = WordTokens(*ctx_->tokenizer, e->prompt_ids, q.names);
  if (groups.empty() && questions_.absent_to_start) {
    model::TrainPointer p;
    p.head = 0;
    p.sink = {0};
    p.words = std::move(words);
    e->pointers.push_back(std::move(p));
  } else {
    PointAll(groups, 0, 0, nowhere, &*e, std::move(words));
  }
  // About one widget (its colour, what is at its mark): the answer names
  // how it looks.
  if (q.answers_look && !e->pointers.empty()) {
    const auto& w = screen.widgets[q.about[0]];
    e->pointers.back().looks = {WidgetWhat(w), WidgetText(w)};
  }
  out.example = *std::move(e);
  return out;
}

absl::StatusOr<SyntheticExample> SyntheticTasks::Mixed(uint64_t seed, const TaskMix& mix) const {
  const int total = mix.click + mix.act + mix.path + mix.question;
  if (total <= 0) return absl::InvalidArgumentError("the task mix has no positive weight");
  // The kind from a hash of the seed, so that neighbouring seeds mix well.
  uint64_t h = seed * 0x9e3779b97f4a7c15ull;
  h ^= h >> 31;
  int pick = static_cast<int>(h % static_cast<uint64_t>(total));
  if ((pick -= mix.click) < 0) return Click(seed);
  if ((pick -= mix.act) < 0) return Act(seed);
  if ((pick -= mix.path) < 0) return Path(seed);
  return Question(seed);
}

absl::StatusOr<TaskMix> ParseTaskMix(const std::string& text) {
  TaskMix mix{0, 0, 0, 0};
  for (absl::string_view part : absl::StrSplit(text, ',', absl::SkipEmpty())) {
    std::pair<std::string, std::string> kv = absl::StrSplit(part, absl::MaxSplits('=', 1));
    int weight = 0;
    if (!absl::SimpleAtoi(kv.second, &weight) || weight < 0) {
      return absl::InvalidArgumentError(absl::StrCat("task mix: bad weight in '", part, "'"));
    }
    if (kv.first == "click") {
      mix.click = weight;
    } else if (kv.first == "act") {
      mix.act = weight;
    } else if (kv.first == "path") {
      mix.path = weight;
    } else if (kv.first == "question") {
      mix.question = weight;
    } else {
      return absl::InvalidArgumentError(
          absl::StrCat("task mix: unknown task '", kv.first, "' (click, act, path, question)"));
    }
  }
  if (mix.click + mix.act + mix.path + mix.question <= 0) {
    return absl::InvalidArgumentError("task mix: no positive weight");
  }
  return mix;
}

std::vector<std::string> SyntheticTasks::CorpusTexts(int screens) {
  // The texts of the prompts and answers in about the proportions training
  // sees them, so that frequent phrases get their own pieces.
  auto joined = [](const std::vector<tokenizer::Segment>& segments) {
    std::string out;
    for (const auto& seg : segments) {
      if (seg.text != tokenizer::kImagePlaceholder) out += seg.text;
    }
    return out;
  };
  std::vector<std::string> out;
  for (int i = 0; i < screens; ++i) {
    out.push_back(tokenizer::kMagmaSystemPrompt);
    for (const char* role : {"system", "user", "assistant"}) out.push_back(role);
    const auto s = worlds::RenderScreen(static_cast<uint64_t>(i));
    for (const auto& in : worlds::Instructions(s)) {
      out.push_back(joined(tokenizer::UiGroundingContent(in.text)));
      out.push_back(absl::StrCat("Mark: ", i % 16));
    }
    for (uint64_t k = 0; k < 3; ++k) {
      const auto q = worlds::AskAbout(s, static_cast<uint64_t>(i) * 3 + k);
      out.push_back(q.question + " " + q.answer);
    }
    const auto r = worlds::NewEpisode(static_cast<uint64_t>(i));
    out.push_back(joined(tokenizer::RobotActionContent(r.instruction)));
    out.push_back(agent::HamsterPathPrompt(r.instruction));
    out.push_back(agent::FormatPathAnswer(TwoDecimals(worlds::ExpertPath(r))));
  }
  return out;
}

}  // namespace magma::train
