// A ModelRunner with scripted logits for engine tests: the logits of a
// sequence are a pure function of its own tokens (prompt + generated), so
// they do not depend on what else is in the batch.
#ifndef MAGMA_TESTS_ENGINE_FAKE_RUNNER_H_
#define MAGMA_TESTS_ENGINE_FAKE_RUNNER_H_

#include <condition_variable>
#include <functional>
#include <mutex>
#include <string>
#include <vector>

#include "magma/engine/model_runner.h"

namespace magma::testing {

class FakeImage final : public engine::ImageFeatures {
 public:
  explicit FakeImage(int64_t n) : n_(n) {}
  int64_t num_tokens() const override { return n_; }
  int64_t bytes() const override { return n_ * 16; }

 private:
  int64_t n_;
};

class FakePrefix final : public engine::PrefixState {
 public:
  FakePrefix(std::vector<int32_t> tokens, int64_t positions) : tokens(std::move(tokens)), positions_(positions) {}
  int64_t positions() const override { return positions_; }
  int64_t bytes() const override { return positions_ * 8; }
  std::vector<int32_t> tokens;

 private:
  int64_t positions_;
};

class FakeRunner final : public engine::ModelRunner {
 public:
  using Script = std::function<std::vector<float>(const std::vector<int32_t>& tokens)>;

  FakeRunner(int32_t vocab, int slots, int capacity, Script script)
      : vocab_(vocab), capacity_(capacity), script_(std::move(script)), used_(slots, false), tokens_(slots) {}

  int32_t vocab_size() const override { return vocab_; }
  int32_t image_token_id() const override { return vocab_ - 1; }
  int num_slots() const override { return static_cast<int>(used_.size()); }
  int slot_capacity() const override { return capacity_; }
  int64_t kv_bytes_used() const override {
    std::lock_guard<std::mutex> lock(mu_);
    int64_t n = 0;
    for (size_t s = 0; s < used_.size(); ++s) n += used_[s] ? static_cast<int64_t>(tokens_[s].size()) : 0;
    return n;
  }
  int64_t kv_bytes_total() const override { return static_cast<int64_t>(used_.size()) * capacity_; }
  int64_t ImageTokenCount(const vision::Crops& c) const override { return 3 * c.num_crops(); }

  absl::StatusOr<std::shared_ptr<const engine::ImageFeatures>> EncodeImage(const vision::Crops& c) override {
    std::lock_guard<std::mutex> lock(mu_);
    ++encodes_;
    events_.push_back("E" + std::to_string(3 * c.num_crops()));
    return std::shared_ptr<const engine::ImageFeatures>(std::make_shared<FakeImage>(3 * c.num_crops()));
  }
  int AllocateSlot() override {
    std::lock_guard<std::mutex> lock(mu_);
    for (size_t s = 0; s < used_.size(); ++s) {
      if (!used_[s]) {
        used_[s] = true;
        tokens_[s].clear();
        return static_cast<int>(s);
      }
    }
    return -1;
  }
  void ReleaseSlot(int slot) override {
    std::lock_guard<std::mutex> lock(mu_);
    used_[slot] = false;
    tokens_[slot].clear();
  }
  absl::StatusOr<int64_t> BeginSequence(int slot, const std::vector<int32_t>& ids,
                                        const std::vector<std::shared_ptr<const engine::ImageFeatures>>& images,
                                        const engine::PrefixState* prefix) override {
    std::lock_guard<std::mutex> lock(mu_);
    tokens_[slot] = ids;
    if (prefix != nullptr) {
      const auto& p = static_cast<const FakePrefix&>(*prefix);
      tokens_[slot] = p.tokens;
      tokens_[slot].insert(tokens_[slot].end(), ids.begin(), ids.end());
      ++prefix_restores_;
    }
    prompt_len_[slot] = static_cast<int64_t>(ids.size());
    for (const auto& f : images) prompt_len_[slot] += f->num_tokens() - 1;
    prefilled_[slot] = 0;
    return prompt_len_[slot];
  }
  absl::StatusOr<std::shared_ptr<const engine::PrefixState>> SavePrefix(int slot, int64_t positions) override {
    std::lock_guard<std::mutex> lock(mu_);
    ++prefix_saves_;
    // The fake keeps tokens, not positions: the prefix is everything up to
    // and including the last image token.
    std::vector<int32_t> t = tokens_[slot];
    size_t last = 0;
    for (size_t i = 0; i < t.size(); ++i) {
      if (t[i] == image_token_id()) last = i;
    }
    t.resize(last + 1);
    return std::shared_ptr<const engine::PrefixState>(std::make_shared<FakePrefix>(t, positions));
  }
  int prefix_restores() const {
    std::lock_guard<std::mutex> lock(mu_);
    return prefix_restores_;
  }
  int prefix_saves() const {
    std::lock_guard<std::mutex> lock(mu_);
    return prefix_saves_;
  }

  absl::StatusOr<std::vector<float>> PrefillStep(int slot, int64_t n) override {
    std::vector<int32_t> tokens;
    {
      std::lock_guard<std::mutex> lock(mu_);
      prefill_chunks_.push_back(n);
      events_.push_back("P" + std::to_string(n));
      prefilled_[slot] += n;
      if (prefilled_[slot] < prompt_len_[slot]) return std::vector<float>();
      tokens = tokens_[slot];
    }
    return script_(tokens);
  }
  absl::StatusOr<std::vector<float>> DecodeStep(const std::vector<int>& slots,
                                                const std::vector<int32_t>& tokens) override {
    {
      std::unique_lock<std::mutex> lock(mu_);
      if (gate_closed_) {
        blocked_ = true;
        gate_cv_.notify_all();
      }
      gate_cv_.wait(lock, [this] { return !gate_closed_; });
      blocked_ = false;
      batch_sizes_.push_back(static_cast<int>(slots.size()));
      events_.push_back("D");
    }
    std::vector<float> out;
    for (size_t b = 0; b < slots.size(); ++b) {
      std::vector<int32_t> seq;
      {
        std::lock_guard<std::mutex> lock(mu_);
        tokens_[slots[b]].push_back(tokens[b]);
        seq = tokens_[slots[b]];
      }
      auto l = script_(seq);
      out.insert(out.end(), l.begin(), l.end());
    }
    return out;
  }

  // While closed, DecodeStep blocks (lets a test fill the queue).
  void CloseGate() {
    std::lock_guard<std::mutex> lock(mu_);
    gate_closed_ = true;
  }
  void OpenGate() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      gate_closed_ = false;
    }
    gate_cv_.notify_all();
  }
  // Returns once the engine thread waits at the closed gate.
  void WaitUntilBlocked() {
    std::unique_lock<std::mutex> lock(mu_);
    gate_cv_.wait(lock, [this] { return blocked_; });
  }
  int free_slots() const {
    std::lock_guard<std::mutex> lock(mu_);
    return static_cast<int>(std::count(used_.begin(), used_.end(), false));
  }
  int encodes() const {
    std::lock_guard<std::mutex> lock(mu_);
    return encodes_;
  }
  std::vector<int> batch_sizes() const {
    std::lock_guard<std::mutex> lock(mu_);
    return batch_sizes_;
  }
  std::vector<int64_t> prefill_chunks() const {
    std::lock_guard<std::mutex> lock(mu_);
    return prefill_chunks_;
  }
  // The work in the order it was done: "P<n>" a prefill of n positions,
  // "E<n>" an image encoded into n positions, "D" a decode step.
  std::vector<std::string> events() const {
    std::lock_guard<std::mutex> lock(mu_);
    return events_;
  }

 private:
  int32_t vocab_;
  int capacity_;
  Script script_;
  mutable std::mutex mu_;
  std::condition_variable gate_cv_;
  bool gate_closed_ = false;
  bool blocked_ = false;
  std::vector<bool> used_;
  std::vector<std::vector<int32_t>> tokens_;
  std::map<int, int64_t> prompt_len_, prefilled_;
  int encodes_ = 0;
  int prefix_restores_ = 0;
  int prefix_saves_ = 0;
  std::vector<std::string> events_;
  std::vector<int> batch_sizes_;
  std::vector<int64_t> prefill_chunks_;
};

// Logits that depend on every token of the sequence (an FNV hash seeds a
// small generator), well spread so that sampling differs between seeds.
inline std::vector<float> HashLogits(const std::vector<int32_t>& tokens, int32_t vocab) {
  uint64_t h = 1469598103934665603ull;
  for (int32_t t : tokens) h = (h ^ static_cast<uint64_t>(t + 1)) * 1099511628211ull;
  std::vector<float> l(vocab);
  for (int32_t i = 0; i < vocab; ++i) {
    h ^= h >> 33;
    h *= 0xff51afd7ed558ccdull;
    h ^= h >> 33;
    l[i] = static_cast<float>(h % 1000) / 250.0f;  // 0..4
  }
  return l;
}

}  // namespace magma::testing

#endif  // MAGMA_TESTS_ENGINE_FAKE_RUNNER_H_
