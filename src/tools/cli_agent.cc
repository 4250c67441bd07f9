// magma-cli commands for agent overlays, without a model:
//
//   magma-cli draw-path --image I.png --answer "<ans>[(0.2, 0.3), ...]</ans>" --out O.png
//   magma-cli draw-som  --image I.png --boxes boxes.json --out O.png [--mark_base 0] [--style magma|omniparser]
//   magma-cli propose   --image I.png
//
// boxes.json is a JSON list of [x1, y1, x2, y2] in image pixels. draw-som
// prints the mark table and propose the candidate boxes as JSON on stdout.
#include <fstream>
#include <iostream>
#include <iterator>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>
#include <opencv2/imgcodecs.hpp>
#include <opencv2/imgproc.hpp>

#include "absl/flags/declare.h"
#include "absl/flags/flag.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "magma/agent/path_answer.h"
#include "magma/util/file.h"
#include "magma/vision/geometry.h"
#include "magma/vision/image.h"
#include "magma/vision/overlay.h"
#include "magma/vision/propose.h"

ABSL_DECLARE_FLAG(std::vector<std::string>, image);
ABSL_DECLARE_FLAG(std::string, out);

ABSL_FLAG(std::string, answer, "", "draw-path: the model's answer text holding <ans>[...]</ans>");
ABSL_FLAG(std::string, boxes, "", "draw-som: JSON file with a list of [x1, y1, x2, y2] boxes in image pixels");
ABSL_FLAG(int, mark_base, 0, "draw-som: id of the first mark (Magma's UI agent uses 0)");
ABSL_FLAG(std::string, style, "magma", "draw-som: magma or omniparser");

namespace magma::cli {
namespace {

using vision::PixelBox;

absl::StatusOr<cv::Mat> ReadOneImage() {
  const std::vector<std::string> images = absl::GetFlag(FLAGS_image);
  if (images.size() != 1) return absl::InvalidArgumentError("--image takes exactly one file");
  return vision::ReadRgb(images[0]);
}

absl::Status WriteRgbPng(const cv::Mat& rgb) {
  const std::string path = absl::GetFlag(FLAGS_out);
  if (path.empty()) return absl::InvalidArgumentError("--out is required");
  cv::Mat bgr;
  cv::cvtColor(rgb, bgr, cv::COLOR_RGB2BGR);
  try {
    if (!cv::imwrite(path, bgr)) return absl::InternalError(absl::StrCat("cannot write '", path, "'"));
  } catch (const cv::Exception& e) {
    return absl::InvalidArgumentError(absl::StrCat("cannot write '", path, "': ", e.what()));
  }
  return absl::OkStatus();
}

absl::StatusOr<std::vector<PixelBox>> ReadBoxes(const std::string& path) {
  if (path.empty()) return absl::InvalidArgumentError("--boxes is required");
  auto read = util::ReadFile(path, "boxes file");
  if (!read.ok()) return read.status();
  const std::string& text = *read;
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(text);
  } catch (const nlohmann::json::exception& e) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": not valid JSON: ", e.what()));
  }
  if (!j.is_array()) return absl::InvalidArgumentError(absl::StrCat(path, ": expected a list of [x1, y1, x2, y2]"));
  std::vector<PixelBox> boxes;
  for (size_t i = 0; i < j.size(); ++i) {
    const nlohmann::json& b = j[i];
    if (!b.is_array() || b.size() != 4 || !b[0].is_number() || !b[1].is_number() || !b[2].is_number() ||
        !b[3].is_number()) {
      return absl::InvalidArgumentError(absl::StrCat(path, ": box ", i, " is not [x1, y1, x2, y2] of numbers"));
    }
    boxes.push_back({b[0].get<double>(), b[1].get<double>(), b[2].get<double>(), b[3].get<double>()});
  }
  return boxes;
}

nlohmann::json BoxJson(const PixelBox& b) { return {b.x1, b.y1, b.x2, b.y2}; }

absl::Status DrawPathCommand() {
  auto rgb = ReadOneImage();
  if (!rgb.ok()) return rgb.status();
  auto path = agent::ParsePathAnswer(absl::GetFlag(FLAGS_answer));
  if (!path.ok()) return path.status();
  if (auto s = vision::DrawPath(*path, {}, &*rgb); !s.ok()) return s;
  if (auto s = WriteRgbPng(*rgb); !s.ok()) return s;
  const auto frame = vision::ImageFrame::Identity({rgb->cols, rgb->rows});
  const auto pixels = agent::PathToPixels(*path, frame);
  nlohmann::json points = nlohmann::json::array();
  for (size_t i = 0; i < path->size(); ++i) {
    points.push_back({{"x", pixels[i].x},
                      {"y", pixels[i].y},
                      {"x_norm", (*path)[i].point.x},
                      {"y_norm", (*path)[i].point.y},
                      {"gripper", (*path)[i].gripper == vision::Gripper::kOpen ? "open" : "closed"}});
  }
  std::cout << nlohmann::json{{"points", points}}.dump(2) << "\n";
  return absl::OkStatus();
}

absl::Status DrawSomCommand() {
  auto rgb = ReadOneImage();
  if (!rgb.ok()) return rgb.status();
  auto boxes = ReadBoxes(absl::GetFlag(FLAGS_boxes));
  if (!boxes.ok()) return boxes.status();
  vision::SomOptions options;
  options.mark_base = absl::GetFlag(FLAGS_mark_base);
  const std::string style = absl::GetFlag(FLAGS_style);
  if (style == "omniparser") {
    options.style = vision::SomStyle::kOmniParser;
  } else if (style != "magma") {
    return absl::InvalidArgumentError(absl::StrCat("--style '", style, "' is not magma or omniparser"));
  }
  const auto frame = vision::ImageFrame::Identity({rgb->cols, rgb->rows});
  auto marks = vision::DrawSetOfMarks(*boxes, frame, options, &*rgb);
  if (!marks.ok()) return marks.status();
  if (auto s = WriteRgbPng(*rgb); !s.ok()) return s;
  nlohmann::json table = nlohmann::json::array();
  for (const vision::Mark& m : *marks) {
    table.push_back({{"id", m.id},
                     {"box", BoxJson(m.box)},
                     {"centre", {m.centre.x, m.centre.y}},
                     {"centre_norm", {m.centre_norm.x, m.centre_norm.y}}});
  }
  std::cout << nlohmann::json{{"marks", table}}.dump(2) << "\n";
  return absl::OkStatus();
}

absl::Status ProposeCommand() {
  auto rgb = ReadOneImage();
  if (!rgb.ok()) return rgb.status();
  auto boxes = vision::ProposeElements(*rgb);
  if (!boxes.ok()) return boxes.status();
  nlohmann::json out = nlohmann::json::array();
  for (const PixelBox& b : *boxes) out.push_back(BoxJson(b));
  std::cout << out.dump() << "\n";
  return absl::OkStatus();
}

}  // namespace

// Runs `command` when it is one of draw-path, draw-som or propose: sets
// *handled and returns the exit code (0, or 1 after printing the error).
// Leaves *handled false and returns 2 for any other command.
int RunAgentCommand(const std::string& command, bool* handled) {
  absl::Status (*run)() = nullptr;
  if (command == "draw-path") run = DrawPathCommand;
  if (command == "draw-som") run = DrawSomCommand;
  if (command == "propose") run = ProposeCommand;
  *handled = run != nullptr;
  if (run == nullptr) return 2;
  const absl::Status s = run();
  if (!s.ok()) {
    std::cerr << "error: " << s.ToString() << "\n";
    return 1;
  }
  return 0;
}

}  // namespace magma::cli
