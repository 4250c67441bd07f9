#include "magma/worlds/ui_world.h"

#include <algorithm>
#include <cctype>
#include <map>
#include <random>

#include <opencv2/imgproc.hpp>

#include "magma/vision/overlay.h"

namespace magma::worlds {
namespace {

}  // namespace

const std::vector<std::string>& UiLabels() {
  static const std::vector<std::string> kLabels = {
      "OK", "Cancel", "Settings", "Search", "Save", "Open", "Close", "Help", "Send", "Delete", "Edit", "Share",
      "Print", "Next", "Back", "Login", "Submit", "Reset", "Upload", "Menu"};
  return kLabels;
}

namespace {

bool Overlaps(const vision::PixelBox& a, const std::vector<UiWidget>& placed, double margin) {
  for (const auto& w : placed) {
    const auto& b = w.box;
    if (a.x1 < b.x2 + margin && b.x1 < a.x2 + margin && a.y1 < b.y2 + margin && b.y1 < a.y2 + margin) return true;
  }
  return false;
}

cv::Scalar TextColorOn(const cv::Scalar& bg) {
  const double lum = 0.299 * bg[0] + 0.587 * bg[1] + 0.114 * bg[2];
  return lum > 150 ? cv::Scalar(0, 0, 0) : cv::Scalar(255, 255, 255);
}

// Draws `text` with its baseline starting at `origin`; returns the box it
// covers (ascenders to baseline, descenders included).
vision::PixelBox DrawText(cv::Mat* img, const std::string& text, cv::Point origin, const cv::Scalar& color,
                          double scale) {
  int baseline = 0;
  const cv::Size size = cv::getTextSize(text, cv::FONT_HERSHEY_SIMPLEX, scale, 1, &baseline);
  cv::putText(*img, text, origin, cv::FONT_HERSHEY_SIMPLEX, scale, color, 1, cv::LINE_AA);
  return {static_cast<double>(origin.x), static_cast<double>(origin.y - size.height),
          static_cast<double>(origin.x + size.width), static_cast<double>(origin.y + baseline)};
}

// Draws `text` centred in `box`.
vision::PixelBox DrawLabel(cv::Mat* img, const std::string& text, const vision::PixelBox& box, const cv::Scalar& color,
                           double scale) {
  int baseline = 0;
  const cv::Size size = cv::getTextSize(text, cv::FONT_HERSHEY_SIMPLEX, scale, 1, &baseline);
  const cv::Point origin(static_cast<int>((box.x1 + box.x2 - size.width) / 2),
                         static_cast<int>((box.y1 + box.y2 + size.height) / 2));
  return DrawText(img, text, origin, color, scale);
}

}  // namespace

const std::vector<std::pair<std::string, cv::Scalar>>& UiColors() {
  static const std::vector<std::pair<std::string, cv::Scalar>> kColors = {
      {"red", cv::Scalar(220, 40, 40)},     {"green", cv::Scalar(40, 170, 60)},  {"blue", cv::Scalar(40, 90, 220)},
      {"yellow", cv::Scalar(240, 210, 40)}, {"purple", cv::Scalar(140, 60, 190)}, {"orange", cv::Scalar(245, 140, 30)},
      {"gray", cv::Scalar(128, 128, 128)},  {"black", cv::Scalar(30, 30, 30)}};
  return kColors;
}

UiScreen RenderScreen(uint64_t seed, const UiWorldOptions& o) {
  std::mt19937_64 rng(seed);
  auto uniform = [&rng](int lo, int hi) { return lo + static_cast<int>(rng() % static_cast<uint64_t>(hi - lo + 1)); };
  UiScreen screen;
  screen.rgb = cv::Mat(o.height, o.width, CV_8UC3, cv::Scalar(uniform(225, 250), uniform(225, 250), uniform(225, 250)));
  // Title bar.
  const int bar = 28;
  cv::rectangle(screen.rgb, cv::Rect(0, 0, o.width, bar), cv::Scalar(uniform(40, 90), uniform(60, 110), uniform(90, 150)),
                cv::FILLED);
  cv::putText(screen.rgb, "Window", cv::Point(10, 19), cv::FONT_HERSHEY_SIMPLEX, 0.5, cv::Scalar(255, 255, 255), 1,
              cv::LINE_AA);
  const auto& colors = UiColors();
  std::vector<std::string> labels = UiLabels();
  std::shuffle(labels.begin(), labels.end(), rng);
  const int n = uniform(o.min_widgets, o.max_widgets);
  size_t next_label = 0;
  for (int attempt = 0; static_cast<int>(screen.widgets.size()) < n && attempt < 400; ++attempt) {
    UiWidget w;
    const int kind = uniform(0, 3);
    const auto& [color_name, color] = colors[rng() % colors.size()];
    w.color = color_name;
    int bw, bh;
    if (kind == 0) {  // button with text
      w.kind = "button";
      w.shape = uniform(0, 1) ? "rounded" : "rectangle";
      w.label = labels[next_label % labels.size()];
      bw = 30 + 13 * static_cast<int>(w.label.size()) + uniform(0, 20);
      bh = uniform(26, 40);
    } else if (kind == 1) {  // icon: a coloured shape, no text
      w.kind = "icon";
      w.shape = uniform(0, 1) ? "circle" : "rectangle";
      bw = bh = uniform(26, 48);
    } else if (kind == 2) {  // checkbox with a label to its right
      w.kind = "checkbox";
      w.shape = "rectangle";
      w.label = labels[next_label % labels.size()];
      bw = 24 + 12 * static_cast<int>(w.label.size());
      bh = 22;
    } else {  // text field with a placeholder
      w.kind = "text_field";
      w.shape = "rectangle";
      w.label = labels[next_label % labels.size()];
      bw = uniform(140, 220);
      bh = uniform(26, 34);
    }
    const int x = uniform(8, o.width - bw - 8), y = uniform(bar + 10, o.height - bh - 8);
    w.box = {static_cast<double>(x), static_cast<double>(y), static_cast<double>(x + bw), static_cast<double>(y + bh)};
    if (Overlaps(w.box, screen.widgets, 8)) continue;
    if (!w.label.empty()) ++next_label;
    const cv::Rect r(x, y, bw, bh);
    if (w.kind == "button") {
      if (w.shape == "rounded") {
        const int rad = bh / 2;
        cv::rectangle(screen.rgb, cv::Rect(x + rad, y, bw - 2 * rad, bh), color, cv::FILLED, cv::LINE_AA);
        cv::circle(screen.rgb, cv::Point(x + rad, y + rad), rad, color, cv::FILLED, cv::LINE_AA);
        cv::circle(screen.rgb, cv::Point(x + bw - rad, y + rad), rad, color, cv::FILLED, cv::LINE_AA);
      } else {
        cv::rectangle(screen.rgb, r, color, cv::FILLED);
      }
      w.text = DrawLabel(&screen.rgb, w.label, w.box, TextColorOn(color), 0.6);
    } else if (w.kind == "icon") {
      if (w.shape == "circle") {
        cv::circle(screen.rgb, cv::Point(x + bw / 2, y + bh / 2), bw / 2, color, cv::FILLED, cv::LINE_AA);
      } else {
        cv::rectangle(screen.rgb, r, color, cv::FILLED);
      }
      cv::circle(screen.rgb, cv::Point(x + bw / 2, y + bh / 2), std::max(3, bw / 6), TextColorOn(color), cv::FILLED,
                 cv::LINE_AA);
    } else if (w.kind == "checkbox") {
      cv::rectangle(screen.rgb, cv::Rect(x, y + 2, 18, 18), color, 2);
      if (uniform(0, 1)) cv::line(screen.rgb, cv::Point(x + 4, y + 11), cv::Point(x + 14, y + 6), color, 2, cv::LINE_AA);
      w.text = DrawText(&screen.rgb, w.label, cv::Point(x + 24, y + 17), cv::Scalar(20, 20, 20), 0.55);
    } else {
      cv::rectangle(screen.rgb, r, cv::Scalar(255, 255, 255), cv::FILLED);
      cv::rectangle(screen.rgb, r, color, 2);
      w.text = DrawText(&screen.rgb, w.label, cv::Point(x + 8, y + bh / 2 + 5), cv::Scalar(150, 150, 150), 0.55);
    }
    screen.widgets.push_back(std::move(w));
  }
  return screen;
}

std::vector<UiInstruction> Instructions(const UiScreen& screen) {
  std::vector<UiInstruction> out;
  std::map<std::string, int> by_label;
  std::map<std::string, int> by_look;  // colour + shape + kind
  for (const auto& w : screen.widgets) {
    if (!w.label.empty()) ++by_label[w.label];
    ++by_look[w.color + " " + w.shape + " " + w.kind];
  }
  for (size_t i = 0; i < screen.widgets.size(); ++i) {
    const auto& w = screen.widgets[i];
    const int target = static_cast<int>(i);
    if (!w.label.empty() && by_label[w.label] == 1) {
      if (w.kind == "button") out.push_back({"click " + w.label, target, w.label, /*by_label=*/true});
      if (w.kind == "checkbox") out.push_back({"check " + w.label, target, w.label, /*by_label=*/true});
      if (w.kind == "text_field") {
        out.push_back({"type in the " + w.label + " field", target, w.label + " field", /*by_label=*/true});
      }
    }
    const std::string look = w.color + " " + w.shape + " " + w.kind;
    if (by_look[look] == 1) {
      const std::string kind = w.kind == "text_field" ? "text field" : w.kind;
      const std::string names = w.color + " " + w.shape + " " + kind;
      out.push_back({"click the " + names, target, names});
    }
  }
  return out;
}

absl::StatusOr<cv::Mat> MarkScreen(const UiScreen& screen, std::vector<vision::Mark>* table) {
  std::vector<vision::PixelBox> boxes;
  for (const auto& w : screen.widgets) boxes.push_back(w.box);
  cv::Mat image = screen.rgb.clone();
  const auto frame = vision::ImageFrame::Identity({screen.rgb.cols, screen.rgb.rows});
  auto marks = vision::DrawSetOfMarks(boxes, frame, vision::SomOptions{}, &image);
  if (!marks.ok()) return marks.status();
  if (table != nullptr) *table = *std::move(marks);
  return image;
}

std::string DescribeWidget(const UiWidget& w) {
  if (w.kind == "icon") return "the " + w.color + " " + w.shape + " icon";
  return "the " + w.label + " " + (w.kind == "text_field" ? std::string("field") : w.kind);
}

UiQuestion AskAbout(const UiScreen& screen, uint64_t seed) {
  std::mt19937_64 rng(seed * 31 + 7);
  const auto& w = screen.widgets[rng() % screen.widgets.size()];
  const size_t index = static_cast<size_t>(&w - screen.widgets.data());
  UiQuestion q;
  switch (rng() % 4) {
    case 0:
      break;  // counting, below
    case 1: {
      // Half the time a colour no widget of that kind has.
      std::string color = w.color;
      if (rng() % 2 == 1) {
        std::vector<std::string> absent;
        for (const auto& [name, c] : UiColors()) {
          bool used = false;
          for (const auto& x : screen.widgets) used = used || (x.color == name && x.kind == w.kind);
          if (!used) absent.push_back(name);
        }
        if (!absent.empty()) color = absent[rng() % absent.size()];
      }
      bool present = false;
      for (size_t i = 0; i < screen.widgets.size(); ++i) {
        const auto& x = screen.widgets[i];
        if (x.color == color && x.kind == w.kind) {
          present = true;
          q.about.push_back(static_cast<int>(i));
        }
      }
      q.names = color + " " + (w.kind == "text_field" ? std::string("text field") : w.kind);
      const bool vowel = std::string("aeiou").find(q.names[0]) != std::string::npos;
      q.question = std::string(vowel ? "Is there an " : "Is there a ") + q.names + "?";
      q.answer = present ? "Yes." : "No.";
      break;
    }
    case 2: {
      // Only about an element the description names unambiguously.
      int same = 0;
      for (const auto& x : screen.widgets) same += DescribeWidget(x) == DescribeWidget(w);
      if (w.kind == "icon" || same > 1) break;  // counting instead, below
      q.names = DescribeWidget(w).substr(4);  // without "the "
      q.question = "What color is " + DescribeWidget(w) + "?";
      q.answer = w.color;
      q.about = {static_cast<int>(index)};
      q.answers_look = true;
      break;
    }
    default:
      q.names = "mark " + std::to_string(index);
      q.question = "What is at " + q.names + "?";
      q.answer = DescribeWidget(w);
      q.answer[0] = static_cast<char>(std::toupper(static_cast<unsigned char>(q.answer[0])));
      q.answer += ".";
      q.with_marks = true;
      q.about = {static_cast<int>(index)};
      q.answers_look = true;
      break;
  }
  if (q.question.empty()) {
    int n = 0;
    for (size_t i = 0; i < screen.widgets.size(); ++i) {
      if (screen.widgets[i].kind != "button") continue;
      ++n;
      q.about.push_back(static_cast<int>(i));
    }
    q.names = "buttons";
    q.question = "How many buttons are there?";
    q.answer = std::to_string(n);
  }
  return q;
}

}  // namespace magma::worlds
