#include "magma/engine/sampling.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <unordered_set>

#include "absl/strings/str_cat.h"

namespace magma::engine {
namespace {

class RepetitionPenalty final : public LogitsProcessor {
 public:
  explicit RepetitionPenalty(float penalty) : penalty_(penalty) {}
  void Apply(const std::vector<int32_t>& history, Candidates* c) const override {
    std::unordered_set<int32_t> seen(history.begin(), history.end());
    for (Candidate& cand : c->items) {
      if (seen.count(cand.id)) cand.logit = cand.logit > 0 ? cand.logit / penalty_ : cand.logit * penalty_;
    }
    c->sorted = false;
  }

 private:
  float penalty_;
};

class Temperature final : public LogitsProcessor {
 public:
  explicit Temperature(float t) : t_(t) {}
  void Apply(const std::vector<int32_t>&, Candidates* c) const override {
    for (Candidate& cand : c->items) cand.logit /= t_;
  }

 private:
  float t_;
};

class TopK final : public LogitsProcessor {
 public:
  explicit TopK(int32_t k) : k_(k) {}
  void Apply(const std::vector<int32_t>&, Candidates* c) const override {
    if (static_cast<size_t>(k_) >= c->items.size()) return;
    auto by_logit = [](const Candidate& a, const Candidate& b) {
      return a.logit > b.logit || (a.logit == b.logit && a.id < b.id);
    };
    std::partial_sort(c->items.begin(), c->items.begin() + k_, c->items.end(), by_logit);
    c->items.resize(k_);
    c->sorted = true;
  }

 private:
  int32_t k_;
};

class TopP final : public LogitsProcessor {
 public:
  explicit TopP(float p) : p_(p) {}
  void Apply(const std::vector<int32_t>&, Candidates* c) const override {
    c->SortDescending();
    const std::vector<float> probs = Softmax(*c);
    double cum = 0;
    size_t keep = 0;
    while (keep < probs.size()) {
      cum += probs[keep++];
      if (cum >= p_) break;
    }
    c->items.resize(std::max<size_t>(keep, 1));
  }

 private:
  float p_;
};

class MinP final : public LogitsProcessor {
 public:
  explicit MinP(float p) : p_(p) {}
  void Apply(const std::vector<int32_t>&, Candidates* c) const override {
    c->SortDescending();
    if (c->items.empty()) return;
    // p_i >= p * p_max  <=>  logit_i >= logit_max + log(p).
    const float threshold = c->items[0].logit + std::log(p_);
    size_t keep = 1;
    while (keep < c->items.size() && c->items[keep].logit >= threshold) ++keep;
    c->items.resize(keep);
  }

 private:
  float p_;
};

class AllowedTokens final : public LogitsProcessor {
 public:
  explicit AllowedTokens(std::vector<int32_t> allowed) : allowed_(allowed.begin(), allowed.end()) {}
  void Apply(const std::vector<int32_t>&, Candidates* c) const override {
    c->items.erase(std::remove_if(c->items.begin(), c->items.end(),
                                  [&](const Candidate& cand) { return allowed_.count(cand.id) == 0; }),
                   c->items.end());
  }

 private:
  std::unordered_set<int32_t> allowed_;
};

}  // namespace

absl::Status ValidateSamplingParams(const SamplingParams& p) {
  auto bad = [](const char* field, const std::string& rule) {
    return absl::InvalidArgumentError(absl::StrCat("sampling.", field, " ", rule));
  };
  if (!(p.temperature >= 0) || !std::isfinite(p.temperature)) return bad("temperature", "must be a number >= 0");
  if (p.top_k < 0) return bad("top_k", "must be >= 0");
  if (!(p.top_p > 0 && p.top_p <= 1)) return bad("top_p", "must be in (0, 1]");
  if (!(p.min_p >= 0 && p.min_p <= 1)) return bad("min_p", "must be in [0, 1]");
  if (!(p.repetition_penalty > 0) || !std::isfinite(p.repetition_penalty)) {
    return bad("repetition_penalty", "must be a number > 0");
  }
  if (p.top_logprobs < 0 || p.top_logprobs > 20) return bad("top_logprobs", "must be in 0..20");
  return absl::OkStatus();
}

void Candidates::SortDescending() {
  if (sorted) return;
  std::sort(items.begin(), items.end(), [](const Candidate& a, const Candidate& b) {
    return a.logit > b.logit || (a.logit == b.logit && a.id < b.id);
  });
  sorted = true;
}

std::vector<float> Softmax(const Candidates& c) {
  std::vector<float> p(c.items.size());
  if (p.empty()) return p;
  float mx = -std::numeric_limits<float>::infinity();
  for (const auto& cand : c.items) mx = std::max(mx, cand.logit);
  double sum = 0;
  for (size_t i = 0; i < p.size(); ++i) {
    p[i] = std::exp(c.items[i].logit - mx);
    sum += p[i];
  }
  for (float& v : p) v = static_cast<float>(v / sum);
  return p;
}

std::unique_ptr<LogitsProcessor> MakeRepetitionPenalty(float penalty) {
  return std::make_unique<RepetitionPenalty>(penalty);
}
std::unique_ptr<LogitsProcessor> MakeTemperature(float t) { return std::make_unique<Temperature>(t); }
std::unique_ptr<LogitsProcessor> MakeTopK(int32_t k) { return std::make_unique<TopK>(k); }
std::unique_ptr<LogitsProcessor> MakeTopP(float p) { return std::make_unique<TopP>(p); }
std::unique_ptr<LogitsProcessor> MakeMinP(float p) { return std::make_unique<MinP>(p); }
std::unique_ptr<LogitsProcessor> MakeAllowedTokens(std::vector<int32_t> allowed) {
  return std::make_unique<AllowedTokens>(std::move(allowed));
}

Sampler::Sampler(const SamplingParams& params) : params_(params), rng_(params.seed) {
  if (params.repetition_penalty != 1.0f) chain_.push_back(MakeRepetitionPenalty(params.repetition_penalty));
  if (params.temperature >= kGreedyBelowTemperature) {
    if (params.temperature != 1.0f) chain_.push_back(MakeTemperature(params.temperature));
    if (params.top_k > 0) chain_.push_back(MakeTopK(params.top_k));
    if (params.top_p < 1.0f) chain_.push_back(MakeTopP(params.top_p));
    if (params.min_p > 0.0f) chain_.push_back(MakeMinP(params.min_p));
  }
}

SampledToken Sampler::Sample(const float* logits, int32_t vocab, const std::vector<int32_t>& history,
                             const std::vector<int32_t>* allowed) {
  SampledToken out;
  // The model's own distribution, for logprobs.
  float mx = -std::numeric_limits<float>::infinity();
  for (int32_t i = 0; i < vocab; ++i) mx = std::max(mx, logits[i]);
  double sum = 0;
  for (int32_t i = 0; i < vocab; ++i) sum += std::exp(static_cast<double>(logits[i] - mx));
  const float log_z = mx + static_cast<float>(std::log(sum));

  Candidates c;
  if (allowed != nullptr) {
    c.items.reserve(allowed->size());
    for (int32_t id : *allowed) {
      if (id >= 0 && id < vocab) c.items.push_back({id, logits[id]});
    }
  } else {
    c.items.resize(vocab);
    for (int32_t i = 0; i < vocab; ++i) c.items[i] = {i, logits[i]};
  }
  for (const auto& p : chain_) p->Apply(history, &c);

  if (params_.temperature < kGreedyBelowTemperature || c.items.size() == 1) {
    // Greedy: the first maximum, ties to the smaller id.
    const Candidate* best = &c.items[0];
    for (const auto& cand : c.items) {
      if (cand.logit > best->logit || (cand.logit == best->logit && cand.id < best->id)) best = &cand;
    }
    out.id = best->id;
  } else {
    const std::vector<float> probs = Softmax(c);
    std::uniform_real_distribution<double> u(0.0, 1.0);
    const double r = u(rng_);
    double cum = 0;
    out.id = c.items.back().id;
    for (size_t i = 0; i < probs.size(); ++i) {
      cum += probs[i];
      if (r < cum) {
        out.id = c.items[i].id;
        break;
      }
    }
  }
  out.logprob = logits[out.id] - log_z;
  if (params_.top_logprobs > 0) {
    std::vector<int32_t> ids(vocab);
    for (int32_t i = 0; i < vocab; ++i) ids[i] = i;
    const size_t n = std::min<size_t>(params_.top_logprobs, ids.size());
    std::partial_sort(ids.begin(), ids.begin() + n, ids.end(), [&](int32_t a, int32_t b) {
      return logits[a] > logits[b] || (logits[a] == logits[b] && a < b);
    });
    for (size_t i = 0; i < n; ++i) out.top.push_back({ids[i], logits[ids[i]] - log_z});
  }
  return out;
}

}  // namespace magma::engine
