#include "magma/agent/action_codec.h"

#include <algorithm>
#include <cmath>
#include <fstream>
#include <iterator>

#include <nlohmann/json.hpp>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "magma/util/file.h"

namespace magma::agent {

absl::StatusOr<ActionCodec> ActionCodec::Create(const ActionCodecOptions& options) {
  if (options.num_bins < 2 || options.num_bins > (1 << 20) || options.vocab_size <= options.num_bins) {
    return absl::InvalidArgumentError(absl::StrCat("action codec: need 2 <= num_bins (", options.num_bins,
                                                   ") < vocab_size (", options.vocab_size, ")"));
  }
  return ActionCodec(options.vocab_size, options.num_bins);
}

ActionCodec::ActionCodec(int64_t vocab_size, int num_bins) : vocab_size_(vocab_size), num_bins_(num_bins) {
  // np.linspace(-1, 1, n): i * step + start, the last edge set to stop.
  const double step = 2.0 / (num_bins - 1);
  edges_.resize(num_bins);
  for (int i = 0; i < num_bins; ++i) edges_[i] = i * step + -1.0;
  edges_.back() = 1.0;
  centres_.resize(num_bins - 1);
  for (int i = 0; i + 1 < num_bins; ++i) centres_[i] = (edges_[i] + edges_[i + 1]) / 2.0;
}

int ActionCodec::BinOfToken(int64_t id) const {
  const int64_t d = vocab_size_ - id - 1;
  return static_cast<int>(std::clamp<int64_t>(d, 0, num_bins_ - 2));
}

int64_t ActionCodec::TokenOf(double normalized) const {
  int64_t index = num_bins_;  // NaN sorts after every edge
  if (!std::isnan(normalized)) {
    const double x = std::clamp(normalized, -1.0, 1.0);
    index = std::upper_bound(edges_.begin(), edges_.end(), x) - edges_.begin();
  }
  return vocab_size_ - index;
}

absl::StatusOr<std::vector<double>> ActionCodec::Decode(absl::Span<const int64_t> ids) const {
  std::vector<double> out;
  out.reserve(ids.size());
  for (size_t i = 0; i < ids.size(); ++i) {
    if (!IsActionToken(ids[i])) {
      return absl::InvalidArgumentError(absl::StrCat("action token ", i, " is id ", ids[i],
                                                     ", outside the action range ", first_token(), "..", last_token()));
    }
    out.push_back(centres_[BinOfToken(ids[i])]);
  }
  return out;
}

std::vector<int64_t> ActionCodec::Encode(absl::Span<const double> normalized) const {
  std::vector<int64_t> out;
  out.reserve(normalized.size());
  for (double x : normalized) out.push_back(TokenOf(x));
  return out;
}

absl::Status ActionStatistics::Validate() const {
  if (q01.empty() || q01.size() != q99.size() || q01.size() != mask.size()) {
    return absl::InvalidArgumentError(absl::StrCat("action statistics: q01 (", q01.size(), "), q99 (", q99.size(),
                                                   ") and mask (", mask.size(), ") must have one non-zero length"));
  }
  for (size_t i = 0; i < q01.size(); ++i) {
    if (!std::isfinite(q01[i]) || !std::isfinite(q99[i])) {
      return absl::InvalidArgumentError(absl::StrCat("action statistics: dimension ", i, " is not finite"));
    }
  }
  return absl::OkStatus();
}

namespace {

absl::Status CheckDims(size_t n, const ActionStatistics& stats) {
  if (auto s = stats.Validate(); !s.ok()) return s;
  if (n != stats.q01.size()) {
    return absl::InvalidArgumentError(
        absl::StrCat("action has ", n, " dimensions but the statistics have ", stats.q01.size()));
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<std::vector<double>> Unnormalize(absl::Span<const double> normalized, const ActionStatistics& stats) {
  if (auto s = CheckDims(normalized.size(), stats); !s.ok()) return s;
  std::vector<double> out(normalized.size());
  for (size_t i = 0; i < normalized.size(); ++i) {
    const double x = normalized[i];
    out[i] = stats.mask[i] ? 0.5 * (x + 1) * (stats.q99[i] - stats.q01[i]) + stats.q01[i] : x;
  }
  return out;
}

absl::StatusOr<std::vector<double>> Normalize(absl::Span<const double> raw, const ActionStatistics& stats) {
  if (auto s = CheckDims(raw.size(), stats); !s.ok()) return s;
  std::vector<double> out(raw.size());
  for (size_t i = 0; i < raw.size(); ++i) {
    double x = raw[i];
    if (stats.mask[i]) {
      const double range = stats.q99[i] - stats.q01[i];
      x = range != 0 ? 2 * (raw[i] - stats.q01[i]) / range - 1 : 0.0;
    }
    out[i] = std::clamp(x, -1.0, 1.0);
  }
  return out;
}

namespace {

absl::Status ReadNumbers(const nlohmann::json& j, const std::string& where, std::vector<double>* out) {
  if (!j.is_array()) return absl::InvalidArgumentError(absl::StrCat(where, " must be an array of numbers"));
  for (size_t i = 0; i < j.size(); ++i) {
    if (!j[i].is_number()) return absl::InvalidArgumentError(absl::StrCat(where, "[", i, "] is not a number"));
    out->push_back(j[i].get<double>());
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<DatasetStatistics> DatasetStatistics::FromJson(const std::string& json, const std::string& source) {
  nlohmann::json root;
  try {
    root = nlohmann::json::parse(json);
  } catch (const nlohmann::json::exception& e) {
    return absl::InvalidArgumentError(absl::StrCat(source, ": not valid JSON: ", e.what()));
  }
  if (!root.is_object()) return absl::InvalidArgumentError(absl::StrCat(source, ": the top level must be an object"));
  DatasetStatistics out;
  out.source_ = source;
  for (const auto& [key, entry] : root.items()) {
    const std::string where = absl::StrCat(source, ": ", key);
    if (!entry.is_object() || !entry.contains("action") || !entry["action"].is_object()) {
      return absl::InvalidArgumentError(absl::StrCat(where, ": no \"action\" object"));
    }
    const nlohmann::json& action = entry["action"];
    ActionStatistics stats;
    for (const char* field : {"q01", "q99"}) {
      if (!action.contains(field)) return absl::InvalidArgumentError(absl::StrCat(where, ": action has no ", field));
    }
    if (auto s = ReadNumbers(action["q01"], where + ".action.q01", &stats.q01); !s.ok()) return s;
    if (auto s = ReadNumbers(action["q99"], where + ".action.q99", &stats.q99); !s.ok()) return s;
    if (action.contains("mask")) {
      const nlohmann::json& mask = action["mask"];
      if (!mask.is_array()) return absl::InvalidArgumentError(absl::StrCat(where, ".action.mask must be an array"));
      for (size_t i = 0; i < mask.size(); ++i) {
        if (!mask[i].is_boolean()) {
          return absl::InvalidArgumentError(absl::StrCat(where, ".action.mask[", i, "] is not a boolean"));
        }
        stats.mask.push_back(mask[i].get<bool>());
      }
    } else {
      stats.mask.assign(stats.q01.size(), true);
    }
    if (auto s = stats.Validate(); !s.ok()) return absl::InvalidArgumentError(absl::StrCat(where, ": ", s.message()));
    out.by_key_[key] = std::move(stats);
  }
  return out;
}

absl::StatusOr<DatasetStatistics> DatasetStatistics::Load(const std::string& path) {
  auto text = util::ReadFile(path, "dataset statistics");
  if (!text.ok()) return text.status();
  return FromJson(*text, path);
}

absl::StatusOr<ActionStatistics> DatasetStatistics::Find(const std::string& key) const {
  const auto it = by_key_.find(key);
  if (it != by_key_.end()) return it->second;
  return absl::NotFoundError(absl::StrCat("no action statistics for '", key, "' in ", source_,
                                          "; known keys: ", by_key_.empty() ? "(none)" : absl::StrJoin(keys(), ", ")));
}

std::vector<std::string> DatasetStatistics::keys() const {
  std::vector<std::string> out;
  for (const auto& [key, stats] : by_key_) out.push_back(key);
  return out;
}

}  // namespace magma::agent
