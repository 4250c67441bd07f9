// magma-agent-bench: latency of the agent overlays, parsers and answer
// grammars (no model).
// Prints "<name>: <value> <unit>" lines; times are medians over
// --iterations runs, each on a fresh copy of the image.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <functional>
#include <random>
#include <string>
#include <vector>

#include <opencv2/imgproc.hpp>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "magma/agent/path_answer.h"
#include "magma/agent/tasks.h"
#include "magma/agent/trace_answer.h"
#include "magma/agent/ui_answer.h"
#include "magma/engine/constraint.h"
#include "magma/vision/overlay.h"
#include "magma/vision/propose.h"

ABSL_FLAG(int, iterations, 50, "Timed runs per case");

namespace {

using Clock = std::chrono::steady_clock;
using magma::vision::PixelBox;

// A screenshot-like image: flat panels and filled widgets.
cv::Mat Screenshot(int w, int h, std::mt19937* rng) {
  cv::Mat m(h, w, CV_8UC3, cv::Scalar(245, 246, 248));
  cv::rectangle(m, cv::Rect(0, 0, w, h / 14), cv::Scalar(40, 70, 120), cv::FILLED);
  cv::rectangle(m, cv::Rect(0, h / 14, w / 6, h), cv::Scalar(228, 231, 236), cv::FILLED);
  for (int i = 0; i < 120; ++i) {
    const cv::Rect r(static_cast<int>((*rng)() % w), static_cast<int>((*rng)() % h), 40 + (*rng)() % 160,
                     18 + (*rng)() % 30);
    cv::rectangle(m, r, cv::Scalar((*rng)() % 256, (*rng)() % 256, (*rng)() % 256), cv::FILLED);
    cv::putText(m, "Button", r.tl() + cv::Point(6, 14), cv::FONT_HERSHEY_SIMPLEX, 0.45, cv::Scalar(255, 255, 255), 1,
                cv::LINE_AA);
  }
  return m;
}

std::vector<PixelBox> WidgetBoxes(int n, int w, int h, std::mt19937* rng) {
  std::vector<PixelBox> boxes;
  for (int i = 0; i < n; ++i) {
    const double x = (*rng)() % (w - 40), y = (*rng)() % (h - 20);
    const double bw = 16 + (*rng)() % 220, bh = 14 + (*rng)() % 60;
    boxes.push_back({x, y, std::min<double>(w, x + bw), std::min<double>(h, y + bh)});
  }
  return boxes;
}

// Median milliseconds of `run` over `iterations`, `prepare` untimed before each.
double MedianMs(int iterations, const std::function<void()>& prepare, const std::function<void()>& run) {
  std::vector<double> ms;
  for (int i = 0; i < iterations; ++i) {
    prepare();
    const auto t0 = Clock::now();
    run();
    ms.push_back(std::chrono::duration<double, std::milli>(Clock::now() - t0).count());
  }
  std::sort(ms.begin(), ms.end());
  return ms[ms.size() / 2];
}

void Report(const char* name, double value, const char* unit) { std::printf("%s: %.3f %s\n", name, value, unit); }

}  // namespace

int main(int argc, char** argv) {
  absl::ParseCommandLine(argc, argv);
  const int iterations = std::max(1, absl::GetFlag(FLAGS_iterations));
  std::mt19937 rng(42);

  const cv::Mat screen = Screenshot(1920, 1080, &rng);
  const std::vector<PixelBox> boxes = WidgetBoxes(200, 1920, 1080, &rng);
  const auto frame = magma::vision::ImageFrame::Identity({1920, 1080});
  cv::Mat canvas;
  bool ok = true;
  for (auto style : {magma::vision::SomStyle::kMagma, magma::vision::SomStyle::kOmniParser}) {
    magma::vision::SomOptions options;
    options.style = style;
    const double ms = MedianMs(
        iterations, [&] { screen.copyTo(canvas); },
        [&] { ok = ok && magma::vision::DrawSetOfMarks(boxes, frame, options, &canvas).ok(); });
    Report(style == magma::vision::SomStyle::kMagma ? "som_magma_1920x1080_200_boxes"
                                                    : "som_omniparser_1920x1080_200_boxes",
           ms, "ms");
  }

  const cv::Mat photo(720, 1280, CV_8UC3, cv::Scalar(90, 110, 100));
  auto path = magma::agent::ParsePathAnswer(
      "<ans>[(0.21, 0.74), (0.25, 0.52), (0.31, 0.43), <action>Close Gripper</action>, (0.42, 0.35), (0.55, 0.33), "
      "(0.63, 0.41), <action>Open Gripper</action>, (0.7, 0.55), (0.74, 0.62)]</ans>");
  ok = ok && path.ok();
  if (path.ok()) {
    const double ms = MedianMs(
        iterations, [&] { photo.copyTo(canvas); },
        [&] { ok = ok && magma::vision::DrawPath(*path, {}, &canvas).ok(); });
    Report("hamster_path_1280x720", ms, "ms");
  }

  const cv::Mat ui = Screenshot(1280, 800, &rng);
  size_t proposed = 0;
  const double propose_ms = MedianMs(
      std::max(1, iterations / 5), [] {},
      [&] {
        auto b = magma::vision::ProposeElements(ui);
        ok = ok && b.ok();
        if (b.ok()) proposed = b->size();
      });
  Report("propose_1280x800", propose_ms, "ms");
  Report("propose_1280x800_boxes", static_cast<double>(proposed), "boxes");

  const std::string trace_text =
      "Mark 3 at [120,88], Mark 7 at [40,200] should be moved, and their future positions are:\n\n"
      "\"Mark 3\": \"[[121,90],[125,97],[130,104],[138,110],[145,118],[150,126],[156,133],[160,140]]\"\n\n"
      "\"Mark 7\": \"[[41,198],[44,190],[48,181],[53,175],[60,170],[66,165],[70,160],[75,157]]\"\n\n";
  const double trace_us =
      1000 * MedianMs(
                 iterations, [] {}, [&] { ok = ok && magma::agent::ParseTraceAnswer(trace_text).ok(); });
  Report("parse_trace_answer", trace_us, "us");
  const double ui_us =
      1000 * MedianMs(
                 iterations, [] {},
                 [&] { ok = ok && magma::agent::ParseUiAnswer("Coordinate: (0.24, 0.28). Mark: 9", {}, frame).ok(); });
  Report("parse_ui_answer", ui_us, "us");

  // Compiling a constrained Trace answer's grammar (a byte vocabulary: the
  // automaton does not depend on the tokens).
  std::vector<std::string> bytes = {""};
  for (int c = 1; c < 128; ++c) bytes.push_back(std::string(1, static_cast<char>(c)));
  const auto table = std::make_shared<magma::engine::TokenTable>(bytes, std::vector<int32_t>{0});
  for (const auto& [marks, steps] : std::vector<std::pair<int, int>>{{10, 64}, {40, 16}}) {
    std::vector<magma::vision::PointMark> points;
    for (int i = 1; i <= marks; ++i) points.push_back({i, {10.0 * i, 5.0}});
    const std::string pattern = magma::agent::TraceGrammar(points, steps);
    const double ms = MedianMs(
        std::max(1, iterations / 10), [] {}, [&] { ok = ok && magma::engine::CompileRegex(pattern, table).ok(); });
    const std::string name =
        "compile_trace_grammar_" + std::to_string(marks) + "_marks_" + std::to_string(steps) + "_steps";
    Report(name.c_str(), ms, "ms");
  }
  if (!ok) {
    std::fprintf(stderr, "error: a benchmarked call failed\n");
    return 1;
  }
  return 0;
}
