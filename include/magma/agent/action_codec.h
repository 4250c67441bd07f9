// Robot actions as tokens, the OpenVLA / Magma scheme: each of the action's
// dimensions (7 for Magma: xyz, roll-pitch-yaw, gripper) is clipped to
// [-1, 1] and binned against linspace(-1, 1, 256); bins are written as the
// last tokens of the base vocabulary, counted down from its size. Decoding
// maps a token to the centre of its bin, then unnormalises with the
// dataset's q01 / q99 where `mask` is true.
#ifndef MAGMA_AGENT_ACTION_CODEC_H_
#define MAGMA_AGENT_ACTION_CODEC_H_

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"

namespace magma::agent {

struct ActionCodecOptions {
  // Base vocabulary size V of the tokenizer (tokenizer.vocab_size, without
  // added tokens). Default 128000 (Llama 3).
  int64_t vocab_size = 128000;
  // Bin edges; 255 bins between 256 edges. Default 256.
  int num_bins = 256;
};

// Tokens <-> bins <-> normalised values. Immutable; thread-safe.
class ActionCodec {
 public:
  // INVALID_ARGUMENT unless num_bins >= 2 and vocab_size > num_bins.
  static absl::StatusOr<ActionCodec> Create(const ActionCodecOptions& options = {});

  // Action tokens are V - num_bins .. V - 1.
  int64_t first_token() const { return vocab_size_ - num_bins_; }
  int64_t last_token() const { return vocab_size_ - 1; }
  bool IsActionToken(int64_t id) const { return id >= first_token() && id <= last_token(); }

  // Bin of a token: clip(V - id - 1, 0, num_bins - 2), as the reference
  // decodes (bin 0 is the top token, so V - 1 -> 0 and V - 256 -> 254).
  int BinOfToken(int64_t id) const;
  // Centre of bin b of linspace(-1, 1, num_bins). REQUIRES: 0 <= b < num_bins - 1.
  double BinCentre(int bin) const { return centres_[bin]; }
  // Token of a normalised value: V - digitize(clip(x, -1, 1), edges), where
  // digitize counts the edges <= x (NumPy's rule; NaN counts all of them).
  int64_t TokenOf(double normalized) const;

  // Normalised values of action tokens. INVALID_ARGUMENT naming the index and
  // id of the first token outside the action range.
  absl::StatusOr<std::vector<double>> Decode(absl::Span<const int64_t> ids) const;
  std::vector<int64_t> Encode(absl::Span<const double> normalized) const;

 private:
  ActionCodec(int64_t vocab_size, int num_bins);
  int64_t vocab_size_;
  int num_bins_;
  std::vector<double> edges_;    // np.linspace(-1, 1, num_bins)
  std::vector<double> centres_;  // (edges[:-1] + edges[1:]) / 2
};

// One dataset's action statistics (dataset_statistics.json:
// {key: {"action": {"q01": [...], "q99": [...], "mask": [...]}}}).
struct ActionStatistics {
  std::vector<double> q01;
  std::vector<double> q99;
  std::vector<bool> mask;  // true: unnormalise this dimension

  // INVALID_ARGUMENT unless q01, q99 and mask have one equal, non-zero length
  // and the values are finite.
  absl::Status Validate() const;
};

// Raw action of normalised values: where mask, 0.5 * (x + 1) * (q99 - q01)
// + q01; elsewhere x unchanged (the gripper). INVALID_ARGUMENT when the
// dimensions differ or the statistics are invalid.
absl::StatusOr<std::vector<double>> Unnormalize(absl::Span<const double> normalized, const ActionStatistics& stats);
// The inverse: where mask, 2 * (a - q01) / (q99 - q01) - 1 (0 when q99 ==
// q01), clipped to [-1, 1]; elsewhere a clipped to [-1, 1].
absl::StatusOr<std::vector<double>> Normalize(absl::Span<const double> raw, const ActionStatistics& stats);

// The statistics of every dataset in a dataset_statistics.json.
class DatasetStatistics {
 public:
  // Parses the JSON text; `source` names it in errors. A missing "mask"
  // means all true. INVALID_ARGUMENT on malformed JSON or entries.
  static absl::StatusOr<DatasetStatistics> FromJson(const std::string& json, const std::string& source);
  // Reads and parses a file (NOT_FOUND if unreadable).
  static absl::StatusOr<DatasetStatistics> Load(const std::string& path);

  // The statistics under `key`; NOT_FOUND listing the known keys otherwise.
  absl::StatusOr<ActionStatistics> Find(const std::string& key) const;
  std::vector<std::string> keys() const;

 private:
  std::map<std::string, ActionStatistics> by_key_;
  std::string source_;
};

}  // namespace magma::agent

#endif  // MAGMA_AGENT_ACTION_CODEC_H_
