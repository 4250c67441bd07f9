// A synthetic UI world for training and evaluating click grounding: screens
// of windows, buttons, icons, text fields and checkboxes drawn with OpenCV's
// own fonts, their ground-truth boxes, and instructions that name exactly
// one element. Deterministic by seed.
#ifndef MAGMA_WORLDS_UI_WORLD_H_
#define MAGMA_WORLDS_UI_WORLD_H_

#include <cstdint>
#include <string>
#include <vector>

#include <opencv2/core.hpp>

#include "absl/status/statusor.h"

#include "magma/vision/geometry.h"
#include "magma/vision/overlay.h"

namespace magma::worlds {

struct UiWidget {
  vision::PixelBox box;    // original-image pixels
  std::string kind;        // "button", "icon", "checkbox", "text_field"
  std::string shape;       // "rectangle", "rounded", "circle"
  std::string color;       // colour name, e.g. "red"
  std::string label;       // visible text ("" for icons)
  vision::PixelBox text;   // where the label's text is drawn (empty for icons)
};

struct UiScreen {
  cv::Mat rgb;  // CV_8UC3, RGB
  std::vector<UiWidget> widgets;
};

struct UiWorldOptions {
  int width = 448;  // pixels: two 224-pixel crops side by side, unscaled
  int height = 224;
  int min_widgets = 3;
  int max_widgets = 7;
};

// A screen: a window with a title bar and widgets that do not overlap.
UiScreen RenderScreen(uint64_t seed, const UiWorldOptions& options = {});

struct UiInstruction {
  std::string text;  // e.g. "open Settings", "click the red circle button"
  int target = 0;    // index into UiScreen::widgets
  std::string names;  // the words of `text` that name the target: "Settings", "red circle button"
  bool by_label = false;  // named by its label ("open Settings"), not by how it looks
};

// Instructions that each identify exactly one widget of `screen` (by label,
// or by colour + shape + kind when that combination is unique).
std::vector<UiInstruction> Instructions(const UiScreen& screen);

// A question about a screen and its expected short answer.
struct UiQuestion {
  std::string question;  // e.g. "How many buttons are there?"
  std::string answer;    // e.g. "3"
  // The question is about Set-of-Mark ids: ask it with the screen's widgets
  // marked (ids from 0 in widget order, as DrawSetOfMarks numbers them).
  bool with_marks = false;
  std::vector<int> about;  // the widgets the answer is about (indices)
  std::string names;       // the words of `question` that name them: "red button", "mark 3"
  // The answer says how the one widget in `about` looks (its colour, its
  // description).
  bool answers_look = false;
};

// One of: how many buttons; is there a <colour> <kind> (yes/no); what colour
// is <element>; what is at mark N. Chosen and built deterministically from
// `seed`.
UiQuestion AskAbout(const UiScreen& screen, uint64_t seed);

// The screen with its widgets marked as the Click task marks them
// (DrawSetOfMarks with default options: ids from 0 in widget order).
// `marks` (optional) receives the mark table.
absl::StatusOr<cv::Mat> MarkScreen(const UiScreen& screen, std::vector<vision::Mark>* marks = nullptr);

// How an instruction or answer names a widget: "the Save button", "the red
// circle icon", "the Search field", "the Login checkbox".
std::string DescribeWidget(const UiWidget& widget);

// The labels buttons, checkboxes and text fields carry.
const std::vector<std::string>& UiLabels();

// The colour names the world uses and their RGB values.
const std::vector<std::pair<std::string, cv::Scalar>>& UiColors();

}  // namespace magma::worlds

#endif  // MAGMA_WORLDS_UI_WORLD_H_
