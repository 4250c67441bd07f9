#include "metrics.h"

#include <charconv>

#include "absl/strings/str_cat.h"
#include "absl/time/time.h"

namespace magma::api {

void Metrics::Histogram::Observe(double v) {
  size_t i = 0;
  while (i < bounds.size() && v > bounds[i]) ++i;
  ++counts[i];
  sum += v;
  ++count;
}

void Metrics::Histogram::Render(const std::string& name, const std::string& help, std::string* out) const {
  absl::StrAppend(out, "# HELP ", name, " ", help, "\n# TYPE ", name, " histogram\n");
  uint64_t cumulative = 0;
  for (size_t i = 0; i < bounds.size(); ++i) {
    cumulative += counts[i];
    absl::StrAppend(out, name, "_bucket{le=\"", bounds[i], "\"} ", cumulative, "\n");
  }
  // The sum in full (shortest round-trip) precision: StrAppend's six
  // significant digits would make rate(_sum) coarse on a long-running server.
  char digits[32];
  const auto end = std::to_chars(digits, digits + sizeof(digits), sum).ptr;
  absl::StrAppend(out, name, "_bucket{le=\"+Inf\"} ", count, "\n", name, "_sum ",
                  absl::string_view(digits, static_cast<size_t>(end - digits)), "\n", name, "_count ", count, "\n");
}

void Metrics::RecordCall(const std::string& method, const std::string& code, double seconds) {
  std::lock_guard<std::mutex> lock(mu_);
  ++calls_[{method, code}];
  latency_.Observe(seconds);
}

void Metrics::RecordGeneration(const engine::Timings& t) {
  std::lock_guard<std::mutex> lock(mu_);
  queue_.Observe(absl::ToDoubleSeconds(t.queue));
  if (t.output_tokens > 0) ttft_.Observe(absl::ToDoubleSeconds(t.queue + t.vision + t.prefill));
  if (t.output_tokens > 1) tpot_.Observe(absl::ToDoubleSeconds(t.decode) / (t.output_tokens - 1));
}

std::string Metrics::Render(const engine::EngineStats* s) const {
  std::string out;
  std::lock_guard<std::mutex> lock(mu_);
  absl::StrAppend(&out, "# HELP magma_requests_total Finished RPCs by method and status code.\n",
                  "# TYPE magma_requests_total counter\n");
  for (const auto& [key, n] : calls_) {
    absl::StrAppend(&out, "magma_requests_total{method=\"", key.first, "\",code=\"", key.second, "\"} ", n, "\n");
  }
  latency_.Render("magma_request_latency_seconds", "End-to-end RPC latency.", &out);
  queue_.Render("magma_queue_time_seconds", "Time from submission to admission into the batch.", &out);
  ttft_.Render("magma_time_to_first_token_seconds", "Submission to first generated token.", &out);
  tpot_.Render("magma_time_per_output_token_seconds", "Decode time per token after the first.", &out);
  if (s != nullptr) {
    auto gauge = [&out](const char* name, const char* help, int64_t v, const char* type = "gauge") {
      absl::StrAppend(&out, "# HELP ", name, " ", help, "\n# TYPE ", name, " ", type, "\n", name, " ", v, "\n");
    };
    gauge("magma_queue_depth", "Requests waiting for admission.", s->queued);
    gauge("magma_running_sequences", "Sequences holding a KV-cache slot.", s->running);
    gauge("magma_kv_cache_used_bytes", "KV cache in use.", s->kv_bytes_used);
    gauge("magma_kv_cache_capacity_bytes", "KV cache allocated.", s->kv_bytes_total);
    gauge("magma_vision_cache_hits_total", "Images served from the vision-embedding cache.", s->vision_cache_hits,
          "counter");
    gauge("magma_vision_cache_misses_total", "Images encoded by the vision tower.", s->vision_cache_misses, "counter");
    gauge("magma_vision_cache_entries", "Images held in the vision-embedding cache.", s->vision_cache_entries);
    gauge("magma_prompt_tokens_total", "Prompt positions processed (image positions included).", s->prompt_tokens,
          "counter");
    gauge("magma_generated_tokens_total", "Tokens generated.", s->output_tokens, "counter");
  }
  return out;
}

}  // namespace magma::api
