// Prometheus metrics of the RPC layer and the engine (private to api).
// Recording is thread-safe and cheap (one mutex per update).
#ifndef MAGMA_SRC_API_METRICS_H_
#define MAGMA_SRC_API_METRICS_H_

#include <array>
#include <map>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

#include "magma/engine/engine.h"

namespace magma::api {

class Metrics {
 public:
  // One finished RPC: method name ("Click") and gRPC status code name ("OK").
  void RecordCall(const std::string& method, const std::string& code, double seconds);
  // Timings of one engine request.
  void RecordGeneration(const engine::Timings& t);
  // The exposition text, with gauges from `stats` (may be null).
  std::string Render(const engine::EngineStats* stats) const;

 private:
  struct Histogram {
    std::vector<double> bounds;
    std::vector<uint64_t> counts;  // per bound, non-cumulative, + overflow
    double sum = 0;
    uint64_t count = 0;
    explicit Histogram(std::vector<double> b) : bounds(std::move(b)), counts(bounds.size() + 1, 0) {}
    void Observe(double v);
    void Render(const std::string& name, const std::string& help, std::string* out) const;
  };
  mutable std::mutex mu_;
  std::map<std::pair<std::string, std::string>, uint64_t> calls_;  // guarded by mu_
  Histogram latency_{{0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60}};
  Histogram queue_{{0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30}};
  Histogram ttft_{{0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30}};
  Histogram tpot_{{0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1}};
};

}  // namespace magma::api

#endif  // MAGMA_SRC_API_METRICS_H_
