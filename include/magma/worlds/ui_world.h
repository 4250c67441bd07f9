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

#include "magma/vision/geometry.h"

namespace magma::worlds {

struct UiWidget {
  vision::PixelBox box;    // original-image pixels
  std::string kind;        // "button", "icon", "checkbox", "text_field"
  std::string shape;       // "rectangle", "rounded", "circle"
  std::string color;       // colour name, e.g. "red"
  std::string label;       // visible text ("" for icons)
};

struct UiScreen {
  cv::Mat rgb;  // CV_8UC3, RGB
  std::vector<UiWidget> widgets;
};

struct UiWorldOptions {
  int width = 640;       // pixels
  int height = 448;
  int min_widgets = 4;
  int max_widgets = 9;
};

// A screen: a window with a title bar and widgets that do not overlap.
UiScreen RenderScreen(uint64_t seed, const UiWorldOptions& options = {});

struct UiInstruction {
  std::string text;  // e.g. "open Settings", "click the red circle button"
  int target = 0;    // index into UiScreen::widgets
};

// Instructions that each identify exactly one widget of `screen` (by label,
// or by colour + shape + kind when that combination is unique).
std::vector<UiInstruction> Instructions(const UiScreen& screen);

// The colour names the world uses and their RGB values.
const std::vector<std::pair<std::string, cv::Scalar>>& UiColors();

}  // namespace magma::worlds

#endif  // MAGMA_WORLDS_UI_WORLD_H_
