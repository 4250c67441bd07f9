#include "magma/engine/magma_runner.h"

#include <ATen/ATen.h>

#include "absl/strings/str_cat.h"
#include "magma/model/model.h"

namespace magma::engine {
namespace {

class TensorImageFeatures final : public ImageFeatures {
 public:
  explicit TensorImageFeatures(at::Tensor t) : t_(std::move(t)) {}
  int64_t num_tokens() const override { return t_.size(0); }
  int64_t bytes() const override { return t_.numel() * t_.element_size(); }
  const at::Tensor& tensor() const { return t_; }

 private:
  at::Tensor t_;
};

class KvPrefix final : public PrefixState {
 public:
  explicit KvPrefix(model::KvCache::Snapshot s) : s_(std::move(s)) {}
  int64_t positions() const override { return s_.positions; }
  int64_t bytes() const override { return s_.bytes(); }
  const model::KvCache::Snapshot& snapshot() const { return s_; }

 private:
  model::KvCache::Snapshot s_;
};

class MagmaRunner final : public ModelRunner {
 public:
  MagmaRunner(const model::MagmaModel* m, const MagmaRunnerOptions& o)
      : m_(m),
        capacity_(o.context_tokens > 0 ? std::min<int>(o.context_tokens, static_cast<int>(m->max_context_tokens()))
                                       : static_cast<int>(m->max_context_tokens())),
        cache_(m->config().text, o.slots, capacity_, m->dtype()),
        pending_(o.slots) {}

  int32_t vocab_size() const override { return static_cast<int32_t>(m_->vocab_size()); }
  int32_t image_token_id() const override { return static_cast<int32_t>(m_->image_token_id()); }
  int num_slots() const override { return cache_.num_slots(); }
  int slot_capacity() const override { return capacity_; }
  int64_t kv_bytes_total() const override { return cache_.bytes(); }
  int64_t kv_bytes_used() const override {
    int64_t used = 0;
    for (int s = 0; s < cache_.num_slots(); ++s) used += cache_.length(s);
    return cache_.bytes() / (static_cast<int64_t>(cache_.num_slots()) * capacity_) * used;
  }

  int64_t ImageTokenCount(const vision::Crops& crops) const override {
    return m_->ImageTokenCount(crops.grid.rows, crops.grid.cols);
  }

  absl::StatusOr<std::shared_ptr<const ImageFeatures>> EncodeImage(const vision::Crops& crops) override {
    if (crops.base != m_->crop_size()) {
      return absl::InvalidArgumentError(absl::StrCat("image crops of ", crops.base, " px; the model takes ",
                                                     m_->crop_size()));
    }
    at::Tensor pixels = at::from_blob(const_cast<float*>(crops.pixels.data()),
                                      {crops.num_crops(), 3, crops.base, crops.base}, at::kFloat);
    auto f = m_->EncodeImage(pixels, crops.grid.rows, crops.grid.cols);
    if (!f.ok()) return f.status();
    return std::shared_ptr<const ImageFeatures>(std::make_shared<TensorImageFeatures>(*f));
  }

  int AllocateSlot() override { return cache_.Allocate(); }
  void ReleaseSlot(int slot) override {
    cache_.Release(slot);
    pending_[slot] = at::Tensor();
  }

  absl::StatusOr<int64_t> BeginSequence(int slot, const std::vector<int32_t>& ids,
                                        const std::vector<std::shared_ptr<const ImageFeatures>>& images,
                                        const PrefixState* prefix) override {
    if (prefix != nullptr) {
      try {
        cache_.Restore(slot, static_cast<const KvPrefix*>(prefix)->snapshot());
      } catch (const std::exception& e) {
        return absl::InternalError(absl::StrCat("restoring a cached prefix: ", e.what()));
      }
    }
    std::vector<int64_t> ids64(ids.begin(), ids.end());
    std::vector<at::Tensor> feats;
    for (const auto& f : images) feats.push_back(static_cast<const TensorImageFeatures&>(*f).tensor());
    auto embeds = m_->EmbedPrompt(ids64, feats);
    if (!embeds.ok()) return embeds.status();
    pending_[slot] = *embeds;
    offset_[slot] = 0;
    return embeds->size(0);
  }

  absl::StatusOr<std::shared_ptr<const PrefixState>> SavePrefix(int slot, int64_t positions) override {
    if (positions > cache_.length(slot)) return absl::InternalError("SavePrefix beyond the cached positions");
    try {
      return std::shared_ptr<const PrefixState>(std::make_shared<KvPrefix>(cache_.Save(slot, positions)));
    } catch (const std::exception& e) {
      return absl::InternalError(absl::StrCat("saving a prefix: ", e.what()));
    }
  }

  absl::StatusOr<std::vector<float>> PrefillStep(int slot, int64_t max_positions) override {
    at::Tensor& e = pending_[slot];
    if (!e.defined()) return absl::FailedPreconditionError("PrefillStep without BeginSequence");
    int64_t& off = offset_[slot];
    const int64_t n = std::min<int64_t>(max_positions, e.size(0) - off);
    auto logits = m_->Prefill(e.narrow(0, off, n), &cache_, slot);
    if (!logits.ok()) return logits.status();
    off += n;
    if (off < e.size(0)) return std::vector<float>();
    pending_[slot] = at::Tensor();
    at::Tensor l = logits->contiguous();
    return std::vector<float>(l.data_ptr<float>(), l.data_ptr<float>() + l.numel());
  }

  absl::StatusOr<std::vector<float>> DecodeStep(const std::vector<int>& slots,
                                                const std::vector<int32_t>& tokens) override {
    auto logits = m_->Decode(std::vector<int64_t>(tokens.begin(), tokens.end()), slots, &cache_);
    if (!logits.ok()) return logits.status();
    at::Tensor l = logits->contiguous();
    return std::vector<float>(l.data_ptr<float>(), l.data_ptr<float>() + l.numel());
  }

 private:
  const model::MagmaModel* m_;
  int capacity_;
  model::KvCache cache_;
  std::vector<at::Tensor> pending_;  // per slot: prompt embeddings not yet prefilled
  std::unordered_map<int, int64_t> offset_;
};

}  // namespace

std::unique_ptr<ModelRunner> MakeMagmaRunner(const model::MagmaModel* model, const MagmaRunnerOptions& options) {
  return std::make_unique<MagmaRunner>(model, options);
}

}  // namespace magma::engine
