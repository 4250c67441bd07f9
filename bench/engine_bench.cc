// magma-engine-bench: the decode loop under concurrent load.
//
//   magma-engine-bench --model_dir D [--dtype bfloat16] [--concurrency 1,4,8,16]
//                      [--prompt 128] [--max_tokens 64] [--requests_per_client 3]
//
// Prints generated tokens/s and request latency p50/p99 per concurrency, then
// time-to-first-token of a click-sized request (a 1920x1080 screenshot, 2x2
// crops) cold and with a vision-cache hit.
#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <iostream>
#include <mutex>
#include <thread>

#include <opencv2/imgproc.hpp>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "magma/engine/engine.h"
#include "magma/engine/magma_runner.h"
#include "magma/model/model.h"
#include "magma/model/runtime.h"
#include "magma/util/logging.h"
#include "magma/vision/image.h"

ABSL_FLAG(std::string, model_dir, "", "Checkpoint directory");
ABSL_FLAG(std::string, dtype, "bfloat16", "Runtime dtype");
ABSL_FLAG(int, threads, 2, "libtorch threads");
ABSL_FLAG(std::vector<std::string>, concurrency, std::vector<std::string>({"1", "4", "8", "16"}), "Client counts");
ABSL_FLAG(int, prompt, 128, "Prompt tokens per request");
ABSL_FLAG(int, max_tokens, 64, "Generated tokens per request");
ABSL_FLAG(int, requests_per_client, 3, "Sequential requests per client");
ABSL_FLAG(bool, ttft, true, "Also measure click time-to-first-token");
ABSL_FLAG(int, slots, 16, "KV-cache slots (= max batch)");
ABSL_FLAG(int, context, 2048, "Positions per slot");

namespace {

using Clock = std::chrono::steady_clock;

// Submits `req` and blocks until it finishes; returns (latency s, ttft s, tokens).
struct Outcome {
  double latency = 0, ttft = 0;
  int tokens = 0;
  bool ok = false;
};

Outcome RunOne(magma::engine::Engine& engine, magma::engine::GenerationRequest req) {
  std::mutex mu;
  std::condition_variable cv;
  bool done = false;
  Outcome out;
  const auto t0 = Clock::now();
  bool first = true;
  magma::engine::RequestCallbacks cb;
  req.stream = true;
  cb.on_delta = [&](const magma::engine::StreamDelta& d) {
    std::lock_guard<std::mutex> lock(mu);
    if (first && !d.token_ids.empty()) {
      out.ttft = std::chrono::duration<double>(Clock::now() - t0).count();
      first = false;
    }
  };
  cb.on_done = [&](magma::engine::GenerationResult r) {
    std::lock_guard<std::mutex> lock(mu);
    out.latency = std::chrono::duration<double>(Clock::now() - t0).count();
    if (first) out.ttft = out.latency;
    out.tokens = static_cast<int>(r.token_ids.size());
    out.ok = r.status.ok();
    done = true;
    cv.notify_all();
  };
  auto h = engine.Submit(std::move(req), cb);
  if (!h.ok()) {
    std::cerr << h.status() << "\n";
    return out;
  }
  std::unique_lock<std::mutex> lock(mu);
  cv.wait(lock, [&] { return done; });
  return out;
}

double Percentile(std::vector<double> v, double p) {
  std::sort(v.begin(), v.end());
  return v.empty() ? 0 : v[std::min(v.size() - 1, static_cast<size_t>(p * (v.size() - 1) + 0.5))];
}

}  // namespace

int main(int argc, char** argv) {
  absl::ParseCommandLine(argc, argv);
  (void)magma::log::SetLevel("warn");
  magma::model::ConfigureRuntime(absl::GetFlag(FLAGS_threads));
  magma::model::LoadOptions lo;
  lo.dtype = absl::GetFlag(FLAGS_dtype);
  lo.prefault = true;
  // Loaded on a thread that exits, so that only the engine thread keeps an
  // OpenMP team (see app/backend.cc).
  absl::StatusOr<std::unique_ptr<magma::model::MagmaModel>> model = absl::UnknownError("not loaded");
  std::thread([&] { model = magma::model::MagmaModel::Load(absl::GetFlag(FLAGS_model_dir), lo); }).join();
  if (!model.ok()) {
    std::cerr << model.status() << "\n";
    return 1;
  }
  const int prompt = absl::GetFlag(FLAGS_prompt), max_tokens = absl::GetFlag(FLAGS_max_tokens);
  magma::engine::MagmaRunnerOptions ro;
  ro.slots = absl::GetFlag(FLAGS_slots);
  ro.context_tokens = absl::GetFlag(FLAGS_context);
  magma::engine::EngineOptions eo;
  eo.max_batch = ro.slots;
  eo.max_queue = 256;
  std::unique_ptr<magma::engine::ModelRunner> runner;
  std::thread([&] { runner = magma::engine::MakeMagmaRunner(model->get(), ro); }).join();
  magma::engine::Engine engine(std::move(runner), nullptr, eo);
  const int32_t vocab = static_cast<int32_t>((*model)->vocab_size());

  for (const std::string& cs : absl::GetFlag(FLAGS_concurrency)) {
    const int clients = std::stoi(cs);
    std::vector<double> latencies;
    std::mutex mu;
    int64_t tokens = 0;
    const auto t0 = Clock::now();
    std::vector<std::thread> threads;
    for (int c = 0; c < clients; ++c) {
      threads.emplace_back([&, c] {
        for (int r = 0; r < absl::GetFlag(FLAGS_requests_per_client); ++r) {
          magma::engine::GenerationRequest req;
          for (int i = 0; i < prompt; ++i) req.prompt_ids.push_back(1 + (i * 7919 + c * 104729 + r * 31) % (vocab - 2));
          req.max_new_tokens = max_tokens;
          req.sampling.temperature = 0;
          Outcome o = RunOne(engine, std::move(req));
          std::lock_guard<std::mutex> lock(mu);
          latencies.push_back(o.latency);
          tokens += o.tokens;
        }
      });
    }
    for (auto& t : threads) t.join();
    const double s = std::chrono::duration<double>(Clock::now() - t0).count();
    std::cout << "concurrency " << clients << ": generated_tokens_per_s " << tokens / s << " | latency_p50 "
              << Percentile(latencies, 0.5) << " s | latency_p99 " << Percentile(latencies, 0.99) << " s ("
              << latencies.size() << " requests, " << prompt << "-token prompts, " << max_tokens << " tokens each)\n";
  }

  if (absl::GetFlag(FLAGS_ttft)) {
    // A synthetic 1920x1080 screenshot: flat panels and lines.
    cv::Mat shot(1080, 1920, CV_8UC3, cv::Scalar(235, 235, 240));
    for (int i = 0; i < 40; ++i) {
      cv::rectangle(shot, cv::Rect(40 + (i % 8) * 230, 60 + (i / 8) * 200, 180, 60),
                    cv::Scalar(60 + i * 4, 120, 200 - i * 3), cv::FILLED);
    }
    const magma::vision::AnyresOptions ao = magma::model::AnyresOptionsOf((*model)->config().preprocess);
    auto crops = std::make_shared<magma::vision::Crops>(magma::vision::PreprocessAnyres(shot, ao));
    auto click = [&](const std::string& key) {
      magma::engine::GenerationRequest req;
      req.prompt_ids = {1, static_cast<int32_t>((*model)->image_token_id()), 5, 6, 7, 8};
      req.images.push_back({crops, key});
      req.max_new_tokens = 4;
      req.sampling.temperature = 0;
      return RunOne(engine, std::move(req));
    };
    const Outcome cold = click("screenshot");
    const Outcome warm = click("screenshot");
    std::cout << "click_ttft[1920x1080, " << crops->grid.rows << "x" << crops->grid.cols << " crops, "
              << (*model)->ImageTokenCount(crops->grid.rows, crops->grid.cols) << " image tokens]: cold "
              << cold.ttft * 1000 << " ms, vision-cache hit " << warm.ttft * 1000 << " ms (" << cold.ttft / warm.ttft
              << "x)\n";
  }
  return 0;
}
