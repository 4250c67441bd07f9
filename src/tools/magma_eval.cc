// magma-eval: measures a running magma-serve through its public API on
// held-out seeds of the synthetic worlds: click accuracy (Click), closed-loop
// robot success (Act, one call per step; failed episodes by their first
// failure), 2D-path error (Trace, mean distance between arc-length-resampled
// paths in % of the image diagonal) and question accuracy (Generate).
//
//   magma-eval --server 127.0.0.1:50051 [--screens 500] [--episodes 200] [--paths 100] [--questions 200]
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <map>
#include <random>

#include <grpcpp/grpcpp.h>
#include <opencv2/imgcodecs.hpp>
#include <opencv2/imgproc.hpp>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "magma/v1/agent.grpc.pb.h"
#include "magma/worlds/robot_world.h"
#include "magma/worlds/ui_world.h"
#include "table_flags.h"

ABSL_FLAG(std::string, server, "127.0.0.1:50051", "magma-serve address");
ABSL_FLAG(int, screens, 500, "Click: screens");
ABSL_FLAG(int, episodes, 200, "Act: robot episodes");
ABSL_FLAG(int, max_steps, 60, "Act: steps per episode");
ABSL_FLAG(int, log_episodes, 0,
          "Act: print every step of the first N episodes (gripper, goal, the model's and the expert's action)");
ABSL_FLAG(int, paths, 100, "Trace: scenes");
ABSL_FLAG(int, log_paths, 0, "Trace: print the first N scenes' expected and predicted paths with their error");
ABSL_FLAG(int, questions, 200, "Generate: questions");
ABSL_FLAG(int, log_questions, 0, "Generate: print the first N questions with the expected and the model's answer");
ABSL_FLAG(std::string, demo_dir, "",
          "Write the first screen's Set-of-Mark image and the first robot episode's frames, each with the "
          "model's 2D path drawn, here");
ABSL_FLAG(int, connect_seconds, 120, "Wait this long for the server to accept connections");
ABSL_FLAG(uint64_t, first_seed, 1000000000000,
          "Held-out seeds start here (magma-train draws seed * 1000003 + step * batch + i, and 2^40 + i)");

namespace {

using magma::v1::AgentService;

std::string Png(const cv::Mat& rgb) {
  cv::Mat bgr;
  cv::cvtColor(rgb, bgr, cv::COLOR_RGB2BGR);
  std::vector<uchar> out;
  cv::imencode(".png", bgr, out);
  return std::string(out.begin(), out.end());
}

std::unique_ptr<grpc::ClientContext> Ctx() {
  auto c = std::make_unique<grpc::ClientContext>();
  c->set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(120));
  return c;
}

void WriteFile(const std::string& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary);
  out << bytes;
}

// `n` points equally spaced by arc length along the polyline.
std::vector<cv::Point2d> Resample(const std::vector<cv::Point2d>& p, int n) {
  std::vector<double> cum = {0};
  for (size_t i = 1; i < p.size(); ++i) cum.push_back(cum.back() + cv::norm(p[i] - p[i - 1]));
  std::vector<cv::Point2d> out;
  for (int k = 0; k < n; ++k) {
    const double s = cum.back() * k / (n - 1);
    size_t i = 1;
    while (i < cum.size() - 1 && cum[i] < s) ++i;
    if (p.size() == 1 || cum[i] == cum[i - 1]) {
      out.push_back(p[std::min(i, p.size() - 1)]);
    } else {
      const double t = (s - cum[i - 1]) / (cum[i] - cum[i - 1]);
      out.push_back(p[i - 1] + t * (p[i] - p[i - 1]));
    }
  }
  return out;
}

}  // namespace

int main(int argc, char** argv) {
  absl::ParseCommandLine(argc, argv);
  auto table = magma::tools::TableWorldFromFlags();
  if (!table.ok()) {
    std::cerr << "magma-eval: tabletop options (--table_blocks, --table_plates, --release_steps, --move_divisions): "
              << table.status().message() << std::endl;
    return 2;
  }
  const magma::worlds::RobotWorldOptions ro = *table;
  const auto channel = grpc::CreateChannel(absl::GetFlag(FLAGS_server), grpc::InsecureChannelCredentials());
  // The server listens once its model is loaded.
  if (!channel->WaitForConnected(std::chrono::system_clock::now() +
                                 std::chrono::seconds(absl::GetFlag(FLAGS_connect_seconds)))) {
    std::cerr << "magma-eval: no server at " << absl::GetFlag(FLAGS_server) << " after "
              << absl::GetFlag(FLAGS_connect_seconds) << " s" << std::endl;
    return 2;
  }
  auto stub = AgentService::NewStub(channel);
  const uint64_t base = absl::GetFlag(FLAGS_first_seed);
  const std::string demo = absl::GetFlag(FLAGS_demo_dir);
  if (!demo.empty()) std::filesystem::create_directories(demo);
  // Failed calls, by task. A failed call counts as a wrong answer (a failed
  // robot step as a failed episode), never as one not asked.
  int click_errors = 0, robot_errors = 0, path_errors = 0, question_errors = 0;
  int path_unparsed = 0;  // answered, but no path could be read from the answer

  // Click accuracy, also apart for instructions that name the element by its
  // label ("open Settings") and by how it looks ("click the red circle icon").
  int clicks = 0, correct = 0;
  std::map<std::string, std::pair<int, int>> click_by;  // named by -> (right, asked)
  for (int i = 0; i < absl::GetFlag(FLAGS_screens); ++i) {
    const auto screen = magma::worlds::RenderScreen(base + i);
    const auto instructions = magma::worlds::Instructions(screen);
    if (instructions.empty()) continue;
    const auto& in = instructions[(base + i) % instructions.size()];
    magma::v1::ClickRequest req;
    req.mutable_screenshot()->set_encoded(Png(screen.rgb));
    req.set_instruction(in.text);
    req.set_return_som_image(!demo.empty() && i == 0);
    for (const auto& w : screen.widgets) {
      auto* b = req.add_elements()->mutable_box();
      b->set_x1(w.box.x1), b->set_y1(w.box.y1), b->set_x2(w.box.x2), b->set_y2(w.box.y2);
    }
    magma::v1::ClickResponse resp;
    auto ctx = Ctx();
    const auto& target = screen.widgets[in.target];
    auto& by = click_by[in.by_label ? "label" : "look"];
    ++clicks;
    ++by.second;
    if (!stub->Click(ctx.get(), req, &resp).ok()) {
      ++click_errors;
      continue;
    }
    if (!demo.empty() && i == 0) {
      WriteFile(demo + "/click_som.png", resp.som_image_png());
      WriteFile(demo + "/click_screen.png", Png(screen.rgb));
      std::string boxes = "[";
      for (const auto& w : screen.widgets) {
        absl::StrAppend(&boxes, boxes.size() > 1 ? ", " : "", "[", w.box.x1, ", ", w.box.y1, ", ", w.box.x2, ", ",
                        w.box.y2, "]");
      }
      WriteFile(demo + "/click_boxes.json", boxes + "]\n");
      WriteFile(demo + "/click_instruction.txt", in.text + "\n");
      std::cout << "demo: \"" << in.text << "\" -> mark " << resp.mark() << ", click at (" << resp.click_px().x()
                << ", " << resp.click_px().y() << ")" << std::endl;
    }
    const auto& t = target.box;
    const bool ok = resp.found() && resp.click_px().x() >= t.x1 && resp.click_px().x() <= t.x2 &&
                    resp.click_px().y() >= t.y1 && resp.click_px().y() <= t.y2;
    correct += ok;
    by.first += ok;
  }
  std::cout << "click_accuracy: " << (clicks ? 100.0 * correct / clicks : 0) << " % (" << correct << "/" << clicks
            << " screens, " << click_errors << " failed calls counted wrong); named by";
  for (const auto& [by, n] : click_by) std::cout << " " << by << " " << n.first << "/" << n.second;
  std::cout << std::endl;

  // Closed-loop robot success.
  int successes = 0, episodes = 0, grasped = 0;
  // Episodes by outcome, with the distances of the failing closes and
  // releases.
  std::map<magma::worlds::EpisodeOutcome, std::vector<double>> outcomes;
  for (int i = 0; i < absl::GetFlag(FLAGS_episodes); ++i) {
    auto scene = magma::worlds::NewEpisode(base + i, ro);
    bool failed = false, held_pick = false;
    magma::worlds::EpisodeRecord record;
    if (!demo.empty() && i == 0) {
      WriteFile(demo + "/tabletop.png", Png(magma::worlds::RenderScene(scene, ro)));
      WriteFile(demo + "/tabletop_instruction.txt", scene.instruction + "\n");
    }
    for (int step = 0; step < absl::GetFlag(FLAGS_max_steps) && !magma::worlds::Success(scene); ++step) {
      magma::v1::ActRequest req;
      req.mutable_image()->set_encoded(Png(magma::worlds::RenderScene(scene, ro)));
      req.set_instruction(scene.instruction);
      req.set_unnorm_key("tabletop");
      req.mutable_sampling()->set_temperature(0);
      magma::v1::ActResponse resp;
      auto ctx = Ctx();
      if (!stub->Act(ctx.get(), req, &resp).ok() || resp.action_size() != 7) {
        failed = true;
        break;
      }
      if (!demo.empty() && i == 0) {
        // The frame with the model's current plan drawn on it.
        magma::v1::TraceRequest tr;
        *tr.mutable_image() = req.image();
        tr.set_instruction(scene.instruction);
        tr.set_format(magma::v1::HAMSTER_PATH);
        tr.set_return_overlay(true);
        magma::v1::TraceResponse trace;
        auto tctx = Ctx();
        if (stub->Trace(tctx.get(), tr, &trace).ok()) {
          char name[64];
          std::snprintf(name, sizeof(name), "/robot_step_%02d.png", step);
          WriteFile(demo + name, trace.overlay_png());
        }
      }
      std::array<double, 7> a;
      for (int d = 0; d < 7; ++d) a[d] = resp.action(d);
      a[6] = (a[6] + 1) / 2;  // gripper dimension is passed through normalised: -1..1 -> 0..1
      if (i < absl::GetFlag(FLAGS_log_episodes)) {
        const auto expert = magma::worlds::ExpertAction(scene, ro);
        const auto& goal = scene.objects[scene.held == scene.pick ? scene.place : scene.pick].center;
        std::printf("episode %d step %d: gripper (%.3f, %.3f) %s held %d goal (%.3f, %.3f) | model dx %+.3f dy %+.3f "
                    "grip %.2f | expert dx %+.3f dy %+.3f grip %.0f\n",
                    i, step, scene.gripper.x, scene.gripper.y, scene.gripper_open ? "open" : "closed", scene.held,
                    goal.x, goal.y, a[0], a[1], a[6], expert[0], expert[1], expert[6]);
      }
      const magma::worlds::RobotScene before = scene;
      magma::worlds::Step(&scene, a, ro);
      record.Observe(before, scene);
      held_pick = held_pick || scene.held == scene.pick;
    }
    if (!demo.empty() && i == 0) {
      WriteFile(demo + "/robot_final.png", Png(magma::worlds::RenderScene(scene, ro)));
      std::cout << "demo: \"" << scene.instruction << "\" " << (magma::worlds::Success(scene) ? "succeeded" : "failed")
                << " after " << scene.steps << " steps" << std::endl;
    }
    robot_errors += failed;
    if (!failed) outcomes[record.Outcome(scene)].push_back(record.FailureDistance());
    ++episodes;
    successes += magma::worlds::Success(scene);
    grasped += held_pick;
  }
  std::cout << "robot_success: " << (episodes ? 100.0 * successes / episodes : 0) << " % (" << successes << "/"
            << episodes << " episodes, <= " << absl::GetFlag(FLAGS_max_steps) << " steps, " << robot_errors
            << " ended by a failed call)" << std::endl;
  std::cout << "robot_grasped_named_block: " << (episodes ? 100.0 * grasped / episodes : 0) << " % (" << grasped << "/"
            << episodes << " episodes)" << std::endl;
  std::cout << "robot_outcomes:";
  const char* sep = " ";
  if (robot_errors > 0) {
    std::cout << sep << "failed call " << robot_errors;
    sep = ", ";
  }
  for (auto& [outcome, distances] : outcomes) {
    std::cout << sep << magma::worlds::OutcomeName(outcome) << " " << distances.size();
    sep = ", ";
    if (outcome != magma::worlds::EpisodeOutcome::kMissedGrasp &&
        outcome != magma::worlds::EpisodeOutcome::kReleasedShort) {
      continue;
    }
    std::vector<double> known;
    for (double d : distances) {
      if (!std::isnan(d)) known.push_back(d);
    }
    if (known.empty()) continue;
    std::sort(known.begin(), known.end());
    std::printf(" (%.3f-%.3f from the %s, median %.3f)", known.front(), known.back(),
                outcome == magma::worlds::EpisodeOutcome::kMissedGrasp ? "block" : "plate", known[known.size() / 2]);
  }
  std::cout << std::endl;

  // 2D path error. A path the server could not give (a failed call, or an
  // answer that does not parse) counts as the largest error a path within
  // the image can have: the whole diagonal.
  double total_error = 0;
  int paths = 0;
  for (int i = 0; i < absl::GetFlag(FLAGS_paths); ++i) {
    const auto scene = magma::worlds::NewEpisode(base + 500000 + i, ro);
    magma::v1::TraceRequest req;
    req.mutable_image()->set_encoded(Png(magma::worlds::RenderScene(scene, ro)));
    req.set_instruction(scene.instruction);
    req.set_format(magma::v1::HAMSTER_PATH);
    magma::v1::TraceResponse resp;
    auto ctx = Ctx();
    ++paths;
    const grpc::Status st = stub->Trace(ctx.get(), req, &resp);
    if (!st.ok() || resp.path_size() == 0) {
      ++(st.ok() ? path_unparsed : path_errors);
      total_error += 1.0;
      continue;
    }
    std::vector<cv::Point2d> got, want;
    for (const auto& p : resp.path()) got.emplace_back(p.norm().x(), p.norm().y());
    for (const auto& w : magma::worlds::ExpertPath(scene)) want.emplace_back(w.point.x, w.point.y);
    const auto a = Resample(got, 100), b = Resample(want, 100);
    double d = 0;
    for (int k = 0; k < 100; ++k) d += cv::norm(a[k] - b[k]);
    const double error = d / 100 / std::sqrt(2.0);  // normalised coordinates: the diagonal is sqrt(2)
    if (i < absl::GetFlag(FLAGS_log_paths)) {
      auto points = [](const std::vector<cv::Point2d>& p) {
        std::string out;
        char buf[48];
        for (const auto& q : p) {
          std::snprintf(buf, sizeof buf, " (%.3f, %.3f)", q.x, q.y);
          out += buf;
        }
        return out;
      };
      std::cout << "  path " << i << ": " << scene.instruction << ", error " << 100 * error << " %; expected"
                << points(want) << "; answered" << points(got) << "; raw answer " << resp.raw_text() << std::endl;
    }
    total_error += error;
  }
  std::cout << "path_error: " << (paths ? 100.0 * total_error / paths : 0) << " % of the diagonal (" << paths
            << " paths; " << path_errors << " failed calls and " << path_unparsed
            << " answers without a path counted as 100 %)" << std::endl;

  // Questions (the generator training uses, held-out seeds): the answer
  // must equal the expected one, case and final punctuation aside.
  std::map<std::string, std::pair<int, int>> by_kind;  // kind -> (right, asked)
  int asked = 0, right = 0;
  for (int i = 0; i < absl::GetFlag(FLAGS_questions); ++i) {
    const uint64_t seed = base + 800000 + i;
    const auto screen = magma::worlds::RenderScreen(seed);
    const auto q = magma::worlds::AskAbout(screen, seed);
    magma::v1::GenerateRequest req;
    req.set_prompt(q.question);
    const std::string kind = q.with_marks                           ? "mark"
                             : q.question.rfind("How many", 0) == 0 ? "count"
                             : q.question.rfind("Is there", 0) == 0 ? "yes/no"
                                                                    : "color";
    ++asked;
    ++by_kind[kind].second;
    if (q.with_marks) {
      auto marked = magma::worlds::MarkScreen(screen);
      if (!marked.ok()) {
        ++question_errors;
        continue;
      }
      req.add_images()->set_encoded(Png(*marked));
    } else {
      req.add_images()->set_encoded(Png(screen.rgb));
    }
    req.set_max_tokens(16);
    req.mutable_sampling()->set_temperature(0);
    magma::v1::GenerateResponse resp;
    auto ctx = Ctx();
    if (!stub->Generate(ctx.get(), req, &resp).ok()) {
      ++question_errors;
      continue;
    }
    auto normal = [](std::string text) {
      text = absl::AsciiStrToLower(absl::StripAsciiWhitespace(text));
      while (!text.empty() && (text.back() == '.' || text.back() == '!')) text.pop_back();
      return text;
    };
    const bool ok = normal(resp.text()) == normal(q.answer);
    if (i < absl::GetFlag(FLAGS_log_questions)) {
      std::cout << (ok ? "  right " : "  wrong ") << q.question << " expected \"" << q.answer << "\" answered \""
                << resp.text() << "\"" << std::endl;
    }
    right += ok;
    by_kind[kind].first += ok;
  }
  std::cout << "question_accuracy: " << (asked ? 100.0 * right / asked : 0) << " % (" << right << "/" << asked
            << " questions, " << question_errors << " failed calls counted wrong;";
  for (const auto& [kind, n] : by_kind) std::cout << " " << kind << " " << n.first << "/" << n.second;
  std::cout << ")" << std::endl;
  const int errors = click_errors + robot_errors + path_errors + question_errors;
  std::cout << "rpc_errors: " << errors << std::endl;
  return errors > 0 ? 1 : 0;
}
