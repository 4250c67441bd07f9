#include "bpe_tokenizer.h"

#include "byte_level.h"
#include "regex.h"
#include "tokenizer_config.h"

#include <algorithm>
#include <array>
#include <atomic>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iterator>
#include <limits>
#include <mutex>
#include <queue>
#include <tuple>
#include <unordered_map>

#include <nlohmann/json.hpp>

#include "absl/container/flat_hash_map.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"

namespace magma::tokenizer {
namespace {

using nlohmann::json;

// GPT-2's split, used by ByteLevel pre-tokenizers with use_regex.
constexpr char kGpt2Pattern[] =
    R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";

struct AddedToken {
  std::string content;
  int32_t id;
  bool special;
};

struct PreTokenizerStep {
  enum Kind { kSplitIsolated, kByteLevel } kind;
  std::unique_ptr<Regex> regex;  // kSplitIsolated, or kByteLevel with use_regex
  bool add_prefix_space = false;
};

class BpeTokenizer final : public Tokenizer {
 public:
  absl::Status Init(const std::string& dir);

  absl::StatusOr<std::vector<int32_t>> EncodeSegments(const std::vector<Segment>& segments,
                                                      bool add_special_tokens) const override;
  std::string TokenBytes(int32_t id, bool /*first*/) const override {
    if (id < 0 || id >= static_cast<int32_t>(id_bytes_.size())) return "";
    return id_bytes_[id];
  }
  std::string IdToPiece(int32_t id) const override {
    if (id < 0 || id >= static_cast<int32_t>(id_pieces_.size())) return "";
    return id_pieces_[id];
  }
  int32_t PieceToId(absl::string_view piece) const override {
    auto it = piece_to_id_.find(piece);
    return it == piece_to_id_.end() ? -1 : it->second;
  }
  bool IsSpecial(int32_t id) const override {
    return id >= 0 && id < static_cast<int32_t>(is_special_.size()) && is_special_[id];
  }
  int32_t vocab_size() const override { return static_cast<int32_t>(id_bytes_.size()); }
  int32_t base_vocab_size() const override { return base_vocab_size_; }
  const SpecialIds& special_ids() const override { return special_; }
  const char* kind() const override { return "bpe"; }
  // Every byte has a token and there is no normaliser: a token stands for
  // exactly its bytes.
  size_t MaxBytesPerToken() const override { return max_token_bytes_; }

 private:
  // Appends the ids of plain text (no special tokens in it).
  absl::Status EncodeText(absl::string_view text, std::vector<int32_t>* out) const;
  void EncodeWord(absl::string_view word, std::vector<int32_t>* out) const;

  std::vector<std::string> id_bytes_;   // raw bytes per id
  std::vector<std::string> id_pieces_;  // stored spelling per id
  std::vector<bool> is_special_;
  absl::flat_hash_map<std::string, int32_t> bytes_to_id_;
  absl::flat_hash_map<std::string, int32_t> piece_to_id_;
  std::array<int32_t, 256> byte_id_{};
  struct Merge {
    int32_t rank, merged;
  };
  absl::flat_hash_map<uint64_t, Merge> merges_;
  bool ignore_merges_ = false;
  int32_t base_vocab_size_ = 0;  // 1 + the largest id of model.vocab
  std::vector<PreTokenizerStep> pre_;
  std::vector<AddedToken> added_;  // longest first
  bool any_plain_added_ = false;    // an added token that is not special
  size_t max_token_bytes_ = 1;
  std::vector<int32_t> prefix_, suffix_;  // post-processor tokens around one sequence
  SpecialIds special_;

  // Per-thread cache of word -> ids (words repeat a lot in real text), tagged
  // with the tokenizer's serial number. Only words of up to kCacheWordBytes
  // bytes are kept (as Hugging Face's BPE does), so that a thread's cache
  // stays within a few tens of MB whatever clients send.
  static constexpr size_t kCacheLimit = 1 << 14;
  static constexpr size_t kCacheWordBytes = 256;
  const uint64_t serial_ = NextSerial();
  static uint64_t NextSerial() {
    static std::atomic<uint64_t> next{1};
    return next++;
  }
  std::array<bool, 256> added_first_byte_{};  // first bytes of added tokens
};

absl::Status Bad(const std::string& file, const std::string& what) {
  return absl::InvalidArgumentError(absl::StrCat(file, ": ", what));
}

absl::Status Unsupported(const std::string& file, const std::string& what) {
  return absl::UnimplementedError(absl::StrCat(file, ": ", what, " is not supported"));
}

// obj[key], or null when `obj` is not an object or lacks `key` (operator[]
// on a const json must not be given a missing key).
const json& Field(const json& obj, const char* key) {
  static const json kNull;
  if (!obj.is_object()) return kNull;
  const auto it = obj.find(key);
  return it == obj.end() ? kNull : *it;
}

// Token ids up to this bound (16M, beyond any real vocabulary); the id
// tables are sized by the largest id.
constexpr int64_t kMaxTokenId = int64_t{1} << 24;

// A token id read from `j`, or an error naming `file` and `what`.
absl::StatusOr<int32_t> TokenId(const json& j, const std::string& file, const std::string& what) {
  if (!j.is_number_integer()) return Bad(file, absl::StrCat(what, " has no integer id"));
  const int64_t id = j.get<int64_t>();
  if (id < 0 || id >= kMaxTokenId) {
    return Bad(file, absl::StrCat(what, " has id ", id, "; ids must be in 0..", kMaxTokenId - 1));
  }
  return static_cast<int32_t>(id);
}

std::string TokenContent(const json& j) {
  if (j.is_string()) return j.get<std::string>();
  if (j.is_object() && j.contains("content") && j["content"].is_string()) return j["content"].get<std::string>();
  return "";
}

absl::Status BpeTokenizer::Init(const std::string& dir) {
  namespace fs = std::filesystem;
  const std::string path = (fs::path(dir) / "tokenizer.json").string();
  std::ifstream in(path);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot read ", path));
  json root = json::parse(in, nullptr, /*allow_exceptions=*/false);
  if (root.is_discarded() || !root.is_object()) return Bad(path, "not a JSON object");

  const json& model = root["model"];
  if (!model.is_object() || model.value("type", "") != "BPE") return Unsupported(path, "a model other than BPE");
  if (model.value("byte_fallback", false)) return Unsupported(path, "byte_fallback BPE (SentencePiece-style)");
  if (model.contains("continuing_subword_prefix") && !model["continuing_subword_prefix"].is_null()) {
    return Unsupported(path, "continuing_subword_prefix");
  }
  ignore_merges_ = model.value("ignore_merges", false);
  if (root.contains("normalizer") && !root["normalizer"].is_null()) return Unsupported(path, "a normalizer");

  // Vocabulary.
  const json& vocab = Field(model, "vocab");
  if (!vocab.is_object()) return Bad(path, "model.vocab is not an object");
  int32_t max_id = -1;
  for (auto it = vocab.begin(); it != vocab.end(); ++it) {
    auto id = TokenId(it.value(), path, absl::StrCat("vocab entry '", it.key(), "'"));
    if (!id.ok()) return id.status();
    max_id = std::max(max_id, *id);
  }
  base_vocab_size_ = max_id + 1;
  std::vector<AddedToken> added;
  if (root.contains("added_tokens") && root["added_tokens"].is_array()) {
    for (const json& t : root["added_tokens"]) {
      if (!t.contains("id") || !t.contains("content")) return Bad(path, "added_tokens entry without id or content");
      auto id = TokenId(t["id"], path, absl::StrCat("added token '", TokenContent(t), "'"));
      if (!id.ok()) return id.status();
      added.push_back({t["content"].get<std::string>(), *id, t.value("special", false)});
    }
  }
  // tokenizer_config.json may declare further added tokens.
  json config;
  const std::string config_path = (fs::path(dir) / "tokenizer_config.json").string();
  if (std::ifstream cin(config_path); cin) {
    config = json::parse(cin, nullptr, /*allow_exceptions=*/false);
    if (config.is_discarded() || !config.is_object()) return Bad(config_path, "not a JSON object");
    ReadBoolSetting(config, "clean_up_tokenization_spaces", &clean_up_tokenization_spaces_);
    if (config.contains("added_tokens_decoder") && config["added_tokens_decoder"].is_object()) {
      for (auto it = config["added_tokens_decoder"].begin(); it != config["added_tokens_decoder"].end(); ++it) {
        int64_t key = -1;
        if (!absl::SimpleAtoi(it.key(), &key)) {
          return Bad(config_path, absl::StrCat("added_tokens_decoder key '", it.key(), "' is not an integer id"));
        }
        auto checked = TokenId(json(key), config_path, absl::StrCat("added_tokens_decoder entry '", it.key(), "'"));
        if (!checked.ok()) return checked.status();
        const int32_t id = *checked;
        const bool known = std::any_of(added.begin(), added.end(), [&](const AddedToken& a) { return a.id == id; });
        if (!known) added.push_back({TokenContent(it.value()), id, it.value().value("special", false)});
      }
    }
  }
  for (auto& a : added) {
    max_id = std::max(max_id, a.id);
    // Image and padding markers are control tokens whatever the file says:
    // client text must never be able to produce them.
    if (a.content == "<image>" || a.content == "<image_start>" || a.content == "<image_end>" ||
        a.content == "<pad>") {
      a.special = true;
    }
  }
  // Ids may leave holes, not mostly holes: the tables below have max_id + 1 rows.
  const int64_t entries = static_cast<int64_t>(vocab.size() + added.size());
  if (max_id >= 2 * entries + 1024) {
    return Bad(path, absl::StrCat("token id ", max_id, " for ", entries, " tokens: the ids are too sparse"));
  }
  id_bytes_.assign(max_id + 1, "");
  id_pieces_.assign(max_id + 1, "");
  is_special_.assign(max_id + 1, false);
  std::string bytes;
  for (auto it = vocab.begin(); it != vocab.end(); ++it) {
    const int32_t id = it.value().get<int32_t>();  // checked above
    if (!PieceToBytes(it.key(), &bytes)) {
      return Unsupported(path, absl::StrCat("vocabulary entry '", it.key(), "' outside the byte-level alphabet"));
    }
    id_bytes_[id] = bytes;
    max_token_bytes_ = std::max(max_token_bytes_, bytes.size());
    id_pieces_[id] = it.key();
    bytes_to_id_[bytes] = id;
    piece_to_id_[it.key()] = id;
  }
  for (int b = 0; b < 256; ++b) {
    auto it = bytes_to_id_.find(std::string(1, static_cast<char>(b)));
    if (it == bytes_to_id_.end()) return Bad(path, absl::StrCat("byte-level vocabulary lacks byte ", b));
    byte_id_[b] = it->second;
  }
  for (const auto& a : added) {
    id_bytes_[a.id] = a.content;
    id_pieces_[a.id] = a.content;
    is_special_[a.id] = a.special;
    piece_to_id_[a.content] = a.id;
    if (!a.special) any_plain_added_ = true;
    if (!a.content.empty()) added_first_byte_[static_cast<unsigned char>(a.content[0])] = true;
  }
  // An added token that renames a vocabulary id still stands for the
  // vocabulary's bytes where merges produce it.
  for (const auto& a : added) max_token_bytes_ = std::max(max_token_bytes_, a.content.size());
  added_ = added;
  std::sort(added_.begin(), added_.end(),
            [](const AddedToken& x, const AddedToken& y) { return x.content.size() > y.content.size(); });

  // Merges: "a b" strings or [a, b] pairs, by rank.
  const json& merges = Field(model, "merges");
  if (!merges.is_array()) return Bad(path, "model.merges is not a list");
  int32_t rank = 0;
  for (const json& m : merges) {
    std::string a, b;
    if (m.is_string()) {
      const std::string s = m.get<std::string>();
      const size_t sp = s.find(' ');
      if (sp == std::string::npos) return Bad(path, absl::StrCat("merge '", s, "' is not 'a b'"));
      a = s.substr(0, sp);
      b = s.substr(sp + 1);
    } else if (m.is_array() && m.size() == 2) {
      a = m[0].get<std::string>();
      b = m[1].get<std::string>();
    } else {
      return Bad(path, "a merge is neither 'a b' nor [a, b]");
    }
    auto ia = piece_to_id_.find(a), ib = piece_to_id_.find(b), im = piece_to_id_.find(a + b);
    if (ia == piece_to_id_.end() || ib == piece_to_id_.end() || im == piece_to_id_.end()) {
      return Bad(path, absl::StrCat("merge '", a, " ", b, "' uses pieces not in the vocabulary"));
    }
    const uint64_t key = (static_cast<uint64_t>(ia->second) << 32) | static_cast<uint32_t>(ib->second);
    merges_.emplace(key, Merge{rank++, im->second});
  }

  // Pre-tokenizer.
  std::vector<const json*> steps;
  const json& pre = root["pre_tokenizer"];
  if (pre.is_object() && pre.value("type", "") == "Sequence") {
    const json& list = Field(pre, "pretokenizers");
    if (!list.is_array()) return Bad(path, "pre_tokenizer.pretokenizers is not a list");
    for (const json& p : list) steps.push_back(&p);
  } else if (pre.is_object()) {
    steps.push_back(&pre);
  }
  for (const json* p : steps) {
    const std::string type = p->value("type", "");
    PreTokenizerStep step;
    if (type == "Split") {
      if (p->value("behavior", "") != "Isolated" || p->value("invert", false)) {
        return Unsupported(path, "a Split pre-tokenizer other than behavior Isolated, invert false");
      }
      const json& pattern = Field(*p, "pattern");
      if (!pattern.is_object() || !pattern.contains("Regex")) return Unsupported(path, "a Split on a plain string");
      auto regex = Regex::Compile(pattern["Regex"].get<std::string>());
      if (!regex.ok()) return Bad(path, std::string(regex.status().message()));
      step.kind = PreTokenizerStep::kSplitIsolated;
      step.regex = *std::move(regex);
    } else if (type == "ByteLevel") {
      step.kind = PreTokenizerStep::kByteLevel;
      step.add_prefix_space = p->value("add_prefix_space", false);
      if (p->value("use_regex", true)) {
        auto regex = Regex::Compile(kGpt2Pattern);
        if (!regex.ok()) return regex.status();
        step.regex = *std::move(regex);
      }
    } else {
      return Unsupported(path, absl::StrCat("pre-tokenizer '", type, "'"));
    }
    pre_.push_back(std::move(step));
  }
  if (root.contains("decoder") && root["decoder"].is_object() && root["decoder"].value("type", "") != "ByteLevel") {
    return Unsupported(path, absl::StrCat("decoder '", root["decoder"].value("type", ""), "'"));
  }

  // Post-processor: tokens a TemplateProcessing adds around a single sequence.
  std::vector<const json*> posts;
  const json& post = root["post_processor"];
  if (post.is_object() && post.value("type", "") == "Sequence") {
    const json& list = Field(post, "processors");
    if (!list.is_array()) return Bad(path, "post_processor.processors is not a list");
    for (const json& p : list) posts.push_back(&p);
  } else if (post.is_object()) {
    posts.push_back(&post);
  }
  for (const json* p : posts) {
    if (p->value("type", "") != "TemplateProcessing") continue;
    bool after = false;
    const json& single = Field(*p, "single");
    if (!single.is_array()) return Bad(path, "post_processor TemplateProcessing.single is not a list");
    for (const json& item : single) {
      if (item.contains("Sequence")) {
        after = true;
      } else if (item.contains("SpecialToken")) {
        const std::string name = item["SpecialToken"].value("id", "");
        const int32_t id = PieceToId(name);
        if (id < 0) return Bad(path, absl::StrCat("post-processor token '", name, "' is not in the vocabulary"));
        (after ? suffix_ : prefix_).push_back(id);
      }
    }
  }

  // Special ids.
  auto id_of = [&](const std::string& content) { return content.empty() ? -1 : PieceToId(content); };
  if (config.is_object()) {
    if (config.contains("bos_token")) special_.bos = id_of(TokenContent(config["bos_token"]));
    if (config.contains("eos_token")) special_.eos = id_of(TokenContent(config["eos_token"]));
    if (config.contains("pad_token")) special_.pad = id_of(TokenContent(config["pad_token"]));
  }
  if (special_.bos < 0) special_.bos = id_of("<|begin_of_text|>");
  if (special_.eos < 0) special_.eos = id_of("<|end_of_text|>");
  special_.eot = id_of("<|eot_id|>");
  if (special_.eot < 0) special_.eot = special_.eos;
  if (special_.pad < 0) special_.pad = id_of("<pad>");
  special_.image = id_of("<image>");
  return absl::OkStatus();
}

void BpeTokenizer::EncodeWord(absl::string_view word, std::vector<int32_t>* out) const {
  if (ignore_merges_) {
    auto it = bytes_to_id_.find(word);
    if (it != bytes_to_id_.end()) {
      out->push_back(it->second);
      return;
    }
  }
  thread_local absl::flat_hash_map<std::string, std::vector<int32_t>> cache;
  thread_local uint64_t cache_owner = 0;
  if (cache_owner != serial_) {
    cache.clear();
    cache_owner = serial_;
  }
  if (auto it = cache.find(word); it != cache.end()) {
    out->insert(out->end(), it->second.begin(), it->second.end());
    return;
  }
  // Repeatedly merge the lowest-ranked adjacent pair, leftmost first (the
  // order Hugging Face's priority queue produces). The symbols form a linked
  // list over the word's bytes, each named by the index of its first byte; a
  // queue holds every adjacent pair that merges, by (rank, left index), and
  // an entry whose two symbols changed since it was queued is skipped. A word
  // of n bytes costs O(n log n), however long.
  const int n = static_cast<int>(word.size());
  std::vector<int32_t> id(word.size());
  std::vector<int> next(word.size()), prev(word.size());
  for (int i = 0; i < n; ++i) {
    id[i] = byte_id_[static_cast<unsigned char>(word[i])];
    next[i] = i + 1;
    prev[i] = i - 1;
  }
  struct Pair {
    int32_t rank;
    int left, right;
    int32_t left_id, right_id, merged;
    bool operator>(const Pair& o) const { return std::tie(rank, left) > std::tie(o.rank, o.left); }
  };
  std::priority_queue<Pair, std::vector<Pair>, std::greater<Pair>> queue;
  auto push = [&](int left) {
    const int right = next[left];
    if (right >= n) return;
    const uint64_t key = (static_cast<uint64_t>(id[left]) << 32) | static_cast<uint32_t>(id[right]);
    auto it = merges_.find(key);
    if (it != merges_.end()) queue.push({it->second.rank, left, right, id[left], id[right], it->second.merged});
  };
  for (int i = 0; i + 1 < n; ++i) push(i);
  std::vector<bool> gone(word.size(), false);
  while (!queue.empty()) {
    const Pair p = queue.top();
    queue.pop();
    if (gone[p.left] || gone[p.right] || next[p.left] != p.right || id[p.left] != p.left_id ||
        id[p.right] != p.right_id) {
      continue;
    }
    id[p.left] = p.merged;
    gone[p.right] = true;
    next[p.left] = next[p.right];
    if (next[p.right] < n) prev[next[p.right]] = p.left;
    if (prev[p.left] >= 0) push(prev[p.left]);
    push(p.left);
  }
  std::vector<int32_t> ids;
  for (int i = 0; i < n; i = next[i]) ids.push_back(id[i]);
  out->insert(out->end(), ids.begin(), ids.end());
  if (word.size() > kCacheWordBytes) return;
  if (cache.size() >= kCacheLimit) cache.clear();
  cache.emplace(std::string(word), std::move(ids));
}

absl::Status BpeTokenizer::EncodeText(absl::string_view text, std::vector<int32_t>* out) const {
  if (text.empty()) return absl::OkStatus();
  // Pieces after each pre-tokenizer step, as [begin, end) into `buffer`.
  std::string buffer(text);
  std::vector<std::pair<size_t, size_t>> pieces = {{0, buffer.size()}};
  for (const auto& step : pre_) {
    if (step.kind == PreTokenizerStep::kByteLevel && step.add_prefix_space && !buffer.empty() &&
        buffer[0] != ' ') {
      buffer.insert(buffer.begin(), ' ');
      for (auto& p : pieces) {
        p.second += 1;
        if (p.first > 0) p.first += 1;
      }
    }
    if (!step.regex) continue;
    std::vector<std::pair<size_t, size_t>> next;
    for (const auto& [b, e] : pieces) {
      absl::string_view piece(buffer.data() + b, e - b);
      size_t last = 0;
      auto matched = step.regex->ForEachMatch(piece, [&](size_t mb, size_t me) {
        if (mb > last) next.emplace_back(b + last, b + mb);  // the text between matches stays a piece
        next.emplace_back(b + mb, b + me);
        last = me;
      });
      if (!matched.ok()) return matched;
      if (last < piece.size()) next.emplace_back(b + last, e);
    }
    pieces = std::move(next);
  }
  for (const auto& [b, e] : pieces) EncodeWord(absl::string_view(buffer.data() + b, e - b), out);
  return absl::OkStatus();
}

absl::StatusOr<std::vector<int32_t>> BpeTokenizer::EncodeSegments(const std::vector<Segment>& segments,
                                                                  bool add_special_tokens) const {
  std::vector<int32_t> out;
  if (add_special_tokens) out = prefix_;
  // Text between recognised added tokens accumulates across segments, so
  // that a template segment and the client text after it are pre-tokenized
  // as the one string the reference would see.
  std::string plain;
  for (const Segment& seg : segments) {
    if (!IsValidUtf8(seg.text)) {
      return absl::InvalidArgumentError("text is not valid UTF-8");
    }
    const absl::string_view text = seg.text;
    if (!seg.parse_special && !any_plain_added_) {
      plain.append(text.data(), text.size());
      continue;
    }
    size_t i = 0;
    while (i < text.size()) {
      if (!added_first_byte_[static_cast<unsigned char>(text[i])]) {
        plain.push_back(text[i]);
        ++i;
        continue;
      }
      const AddedToken* hit = nullptr;
      for (const AddedToken& a : added_) {  // longest first
        if ((a.special && !seg.parse_special) || a.content.empty()) continue;
        if (text.compare(i, a.content.size(), a.content) == 0) {
          hit = &a;
          break;
        }
      }
      if (hit == nullptr) {
        plain.push_back(text[i]);
        ++i;
        continue;
      }
      if (auto s = EncodeText(plain, &out); !s.ok()) return s;
      plain.clear();
      out.push_back(hit->id);
      i += hit->content.size();
    }
  }
  if (auto s = EncodeText(plain, &out); !s.ok()) return s;
  if (add_special_tokens) out.insert(out.end(), suffix_.begin(), suffix_.end());
  return out;
}

}  // namespace

absl::StatusOr<std::unique_ptr<Tokenizer>> LoadBpeTokenizer(const std::string& dir) {
  auto t = std::make_unique<BpeTokenizer>();
  absl::Status s;
  try {
    s = t->Init(dir);
  } catch (const std::exception& e) {  // nlohmann type errors on malformed files
    s = absl::InvalidArgumentError(absl::StrCat(dir, "/tokenizer.json: ", e.what()));
  }
  if (!s.ok()) return s;
  return std::unique_ptr<Tokenizer>(std::move(t));
}

}  // namespace magma::tokenizer
