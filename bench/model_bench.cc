// magma-bench: throughput of the model library on random checkpoints.
//
//   magma-bench --mode vision --model_dir D [--vision_dtype bfloat16] [--crops 4]
//   magma-bench --mode llm    --model_dir D [--dtype bfloat16] [--prompt 512] [--decode 128] [--batch 1,8]
//   magma-bench --mode load   --model_dir D [--dtype bfloat16]
//
// Prints one line per figure: "<name>: <value> <unit>".
#include <sys/mman.h>
#include <sys/resource.h>

#include <algorithm>

#include <chrono>
#include <cstdio>
#include <cstring>
#include <functional>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <string>
#include <vector>

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <mutex>
#include <set>
#include <thread>
#include <c10/core/InferenceMode.h>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/strings/str_cat.h"
#include "magma/model/kernels.h"
#include "magma/model/model.h"
#include "magma/model/runtime.h"
#include "magma/util/logging.h"

ABSL_FLAG(std::string, mode, "llm", "vision | llm | load | gemv");
ABSL_FLAG(std::string, model_dir, "", "Checkpoint directory");
ABSL_FLAG(std::string, dtype, "bfloat16", "Decoder dtype");
ABSL_FLAG(std::string, vision_dtype, "", "Vision dtype (default: --dtype)");
ABSL_FLAG(int, threads, 2, "libtorch threads");
ABSL_FLAG(bool, prefault, false, "load: page all mapped weights in during Load");
ABSL_FLAG(std::string, weights, "auto", "Decoder matrices: auto | mapped | resident");
ABSL_FLAG(int, crops, 2, "vision: crops per timed run");
ABSL_FLAG(int, repeats, 3, "timed repetitions (the best is reported)");
ABSL_FLAG(int, prompt, 512, "llm: prompt tokens");
ABSL_FLAG(int, decode, 128, "llm: decoded tokens");
ABSL_FLAG(bool, in_thread, false, "llm: run on a separate thread (as the engine does)");
ABSL_FLAG(std::vector<std::string>, batch, std::vector<std::string>({"1", "8"}), "llm: batch sizes");

namespace {

using Clock = std::chrono::steady_clock;
double Seconds(Clock::time_point a, Clock::time_point b) { return std::chrono::duration<double>(b - a).count(); }

std::unique_ptr<magma::model::MagmaModel> LoadOrDie() {
  magma::model::LoadOptions options;
  options.dtype = absl::GetFlag(FLAGS_dtype);
  options.vision_dtype = absl::GetFlag(FLAGS_vision_dtype);
  options.prefault = absl::GetFlag(FLAGS_prefault);
  options.weights = absl::GetFlag(FLAGS_weights);
  auto m = magma::model::MagmaModel::Load(absl::GetFlag(FLAGS_model_dir), options);
  if (!m.ok()) {
    std::cerr << m.status() << "\n";
    std::exit(1);
  }
  return *std::move(m);
}

int64_t PeakRssBytes() {
  std::ifstream in("/proc/self/status");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("VmHWM:", 0) == 0) return std::stoll(line.substr(6)) * 1024;
  }
  return 0;
}

int Vision() {
  auto m = LoadOrDie();
  const int64_t s = m->crop_size();
  const int n = absl::GetFlag(FLAGS_crops);
  at::Tensor crops = at::randn({n, 3, s, s});
  (void)m->VisionFeatures(crops.narrow(0, 0, 1));  // warm-up: page in weights
  double best = 1e30;
  for (int r = 0; r < absl::GetFlag(FLAGS_repeats); ++r) {
    auto t0 = Clock::now();
    auto f = m->VisionFeatures(crops);
    auto t1 = Clock::now();
    if (!f.ok()) {
      std::cerr << f.status() << "\n";
      return 1;
    }
    best = std::min(best, Seconds(t0, t1));
  }
  const std::string vd = absl::GetFlag(FLAGS_vision_dtype).empty() ? absl::GetFlag(FLAGS_dtype)
                                                                    : absl::GetFlag(FLAGS_vision_dtype);
  std::cout << "vision_ms_per_crop[" << s << "px," << vd << "]: " << 1000.0 * best / n << " ms\n";
  return 0;
}

// Best-of-3 rate at which `threads` threads read a 1 GiB buffer: the ceiling
// that batch-1 decode, which streams every weight matrix once per token, is
// judged against. On shared VMs this figure drifts by tens of percent from
// minute to minute, so it is measured next to each decode run.
double ReadBandwidthGBs(int threads) {
  // Anonymous memory advised for huge pages, like resident decoder weights.
  const size_t bytes = size_t{1} << 30, words = bytes / sizeof(uint64_t);
  void* map = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (map == MAP_FAILED) return 0;
  (void)madvise(map, bytes, MADV_HUGEPAGE);
  auto* buf = static_cast<uint64_t*>(map);
  std::fill(buf, buf + words, uint64_t{1});
  double best = 1e30;
  for (int rep = 0; rep < 3; ++rep) {
    std::vector<uint64_t> sums(threads);
    auto t0 = Clock::now();
    std::vector<std::thread> pool;
    for (int t = 0; t < threads; ++t) {
      pool.emplace_back([&, t] {
        const uint64_t* p = buf + words / threads * t;
        uint64_t a = 0, b = 0, c = 0, d = 0;
        for (size_t i = 0; i + 4 <= words / threads; i += 4) {
          a += p[i];
          b ^= p[i + 1];
          c += p[i + 2];
          d ^= p[i + 3];
        }
        sums[t] = a + b + c + d;
      });
    }
    for (auto& th : pool) th.join();
    best = std::min(best, Seconds(t0, Clock::now()));
    if (sums[0] == 42) std::cout << "";  // keeps the reads
  }
  munmap(map, bytes);
  return bytes / best / 1e9;
}

// Bytes of decoder weight matrices (attention, MLP, lm_head) one decode step reads.
double DecodeWeightBytes(const magma::model::MagmaModel& m) {
  const auto& t = m.config().text;
  const double h = t.hidden_size, qd = t.num_heads * t.head_dim, kvd = t.num_kv_heads * t.head_dim;
  const double per_layer = h * qd * 2 + h * kvd * 2 + 3 * h * t.intermediate_size;
  const double elem = m.dtype() == at::kBFloat16 ? 2 : 4;
  return (t.num_layers * per_layer + h * m.vocab_size()) * elem;
}

int Llm() {
  auto m = LoadOrDie();
  const int prompt = absl::GetFlag(FLAGS_prompt), steps = absl::GetFlag(FLAGS_decode);
  const std::string tag = absl::StrCat(std::filesystem::path(absl::GetFlag(FLAGS_model_dir)).filename().string(), ",",
                                       absl::GetFlag(FLAGS_dtype), ",", absl::GetFlag(FLAGS_threads), "t");
  for (const std::string& bs : absl::GetFlag(FLAGS_batch)) {
    const int batch = std::stoi(bs);
    magma::model::KvCache cache(m->config().text, batch, prompt + steps + 1, m->dtype());
    std::vector<int> slots;
    std::vector<at::Tensor> prompts;
    for (int b = 0; b < batch; ++b) {
      slots.push_back(cache.Allocate());
      std::vector<int64_t> ids(prompt);
      for (int i = 0; i < prompt; ++i) ids[i] = 1 + (i * 7919 + b * 104729) % (m->vocab_size() - 2);
      prompts.push_back(*m->EmbedPrompt(ids, {}));
    }
    // Warm-up on a short prompt (pages in the weights).
    {
      magma::model::KvCache warm(m->config().text, 1, 64, m->dtype());
      (void)m->Prefill(prompts[0].narrow(0, 0, std::min<int64_t>(32, prompts[0].size(0))), &warm, warm.Allocate());
    }
    auto t0 = Clock::now();
    std::vector<int64_t> next(batch);
    for (int b = 0; b < batch; ++b) {
      auto logits = m->Prefill(prompts[b], &cache, slots[b]);
      if (!logits.ok()) {
        std::cerr << logits.status() << "\n";
        return 1;
      }
      next[b] = logits->argmax().item<int64_t>();
    }
    auto t1 = Clock::now();
    for (int i = 0; i < steps; ++i) {
      auto logits = m->Decode(next, slots, &cache);
      if (!logits.ok()) {
        std::cerr << logits.status() << "\n";
        return 1;
      }
      at::Tensor am = logits->argmax(-1);
      for (int b = 0; b < batch; ++b) next[b] = am[b].item<int64_t>();
    }
    auto t2 = Clock::now();
    std::cout << "prefill_tokens_per_s[" << tag << ",batch " << batch << "," << prompt
              << " tok]: " << batch * prompt / Seconds(t0, t1) << " tok/s\n";
    std::cout << "decode_tokens_per_s[" << tag << ",batch " << batch << "," << steps
              << " tok]: " << batch * steps / Seconds(t1, t2) << " tok/s\n";
    if (batch == 1) {
      const double weights_gbs = DecodeWeightBytes(*m) * steps / Seconds(t1, t2) / 1e9;
      const double ceiling = ReadBandwidthGBs(absl::GetFlag(FLAGS_threads));  // right after the decode run
      std::cout << "decode_weight_read_gb_per_s[" << tag << ",batch 1]: " << weights_gbs << " GB/s\n";
      std::cout << "read_bandwidth_gb_per_s[" << absl::GetFlag(FLAGS_threads) << " threads, measured now]: " << ceiling
                << " GB/s\n";
      std::cout << "decode_share_of_read_bandwidth[" << tag << ",batch 1]: " << 100 * weights_gbs / ceiling
                << " %\n";
    }
  }
  return 0;
}

int Load() {
  int64_t file_bytes = 0;
  for (const auto& e : std::filesystem::directory_iterator(absl::GetFlag(FLAGS_model_dir))) {
    if (e.path().extension() == ".safetensors") file_bytes += static_cast<int64_t>(e.file_size());
  }
  auto t0 = Clock::now();
  auto m = LoadOrDie();
  auto t1 = Clock::now();
  std::cout << "load_seconds: " << Seconds(t0, t1) << " s\n";
  std::cout << "checkpoint_bytes: " << file_bytes / 1e9 << " GB\n";
  std::cout << "peak_rss_after_load: " << PeakRssBytes() / 1e9 << " GB\n";
  // First forward pages the mapped weights in.
  auto t2 = Clock::now();
  magma::model::KvCache cache(m->config().text, 1, 16, m->dtype());
  auto e = m->EmbedPrompt({1, 2, 3, 4}, {});
  (void)m->Prefill(*e, &cache, cache.Allocate());
  auto t3 = Clock::now();
  std::cout << "first_forward_seconds: " << Seconds(t2, t3) << " s\n";
  std::cout << "peak_rss_after_first_forward: " << PeakRssBytes() / 1e9 << " GB\n";
  return 0;
}

// Raw weight-streaming rate of the bf16 matrix-vector kernel vs libtorch.
int Gemv() {
  c10::InferenceMode guard;
  const int64_t n = 14336, k = 4096;
  {
    std::mutex mu;
    std::set<std::thread::id> ids;
    at::parallel_for(0, 1000, 1, [&](int64_t, int64_t) {
      std::lock_guard<std::mutex> lock(mu);
      ids.insert(std::this_thread::get_id());
    });
    std::cout << "parallel_for threads: " << ids.size() << " of " << at::get_num_threads() << "\n";
  }
  std::cout << "bf16 kernels: " << magma::model::Bf16IsaName(magma::model::Bf16IsaInUse()) << "\n";
  at::Tensor w = at::randn({n, k}).to(at::kBFloat16);
  const double gb = n * k * 2 / 1e9;
  auto best_of_10 = [](const std::function<void()>& fn) {
    fn();
    double best = 1e30;
    for (int r = 0; r < 10; ++r) {
      auto t0 = Clock::now();
      fn();
      best = std::min(best, Seconds(t0, Clock::now()));
    }
    return best;
  };
  for (int b : {1, 2, 3, 4, 8}) {
    at::Tensor x = at::randn({b, k});
    const double ours = best_of_10([&] { magma::model::LinearBf16(x, w, {}); });
    const double torch = best_of_10([&] { at::linear(x.to(at::kBFloat16), w); });
    std::cout << "gemv_weight_gb_per_s[ours,batch " << b << "]: " << gb / ours << " GB/s\n";
    std::cout << "gemv_weight_gb_per_s[libtorch,batch " << b << "]: " << gb / torch << " GB/s\n";
  }
  // Prefill: many rows against the same weights, as a matrix product.
  for (int rows : {64, 512}) {
    at::Tensor x = at::randn({rows, k});
    const double flop = 2.0 * rows * n * k;
    const double ours = best_of_10([&] { magma::model::LinearBf16Gemm(x, w, {}); });
    std::cout << "gemm_gflop_per_s[ours," << rows << " rows]: " << flop / ours / 1e9 << " GFLOP/s\n";
    if (rows == 64) {  // libtorch's bfloat16 GEMM is emulated (slow) on CPUs without AVX512-BF16
      const double torch = best_of_10([&] { at::linear(x.to(at::kBFloat16), w); });
      std::cout << "gemm_gflop_per_s[libtorch," << rows << " rows]: " << flop / torch / 1e9 << " GFLOP/s\n";
    }
  }
  // The same matrix where a model loaded with resident weights keeps it:
  // anonymous memory advised for transparent huge pages.
  const size_t bytes = static_cast<size_t>(w.nbytes());
  void* anon = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (anon == MAP_FAILED) return 1;
  (void)madvise(anon, bytes, MADV_HUGEPAGE);
  std::memcpy(anon, w.data_ptr(), bytes);
  at::Tensor placed = at::from_blob(anon, {n, k}, at::TensorOptions().dtype(at::kBFloat16));
  for (int b : {1, 8}) {
    at::Tensor x = at::randn({b, k});
    const double t = best_of_10([&] { magma::model::LinearBf16(x, placed, {}); });
    std::cout << "gemv_weight_gb_per_s[ours,batch " << b << ",huge pages]: " << gb / t << " GB/s\n";
  }
  munmap(anon, bytes);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  absl::ParseCommandLine(argc, argv);
  (void)magma::log::SetLevel("warn");
  magma::model::ConfigureRuntime(absl::GetFlag(FLAGS_threads));
  const std::string mode = absl::GetFlag(FLAGS_mode);
  if (mode == "vision") return Vision();
  if (mode == "llm") {
    if (!absl::GetFlag(FLAGS_in_thread)) return Llm();
    int rc = 0;
    std::thread t([&rc] { rc = Llm(); });
    t.join();
    return rc;
  }
  if (mode == "load") return Load();
  if (mode == "gemv") return Gemv();
  std::cerr << "unknown --mode " << mode << "\n";
  return 2;
}
