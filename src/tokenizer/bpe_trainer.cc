#include "magma/tokenizer/bpe_trainer.h"

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>

#include <nlohmann/json.hpp>

#include "absl/container/flat_hash_map.h"
#include "absl/strings/str_cat.h"
#include "byte_level.h"
#include "magma/tokenizer/tokenizer.h"
#include "regex.h"

namespace magma::tokenizer {

std::vector<AddedTokenSpec> Llama3StyleAddedTokens(int32_t vocab_size, int32_t image_token_id) {
  const char* names[] = {"<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>",
                         "<|eot_id|>", "<pad>"};
  std::vector<AddedTokenSpec> out;
  int32_t id = vocab_size - 1;
  for (const char* n : names) {
    if (id == image_token_id) --id;
    out.push_back({n, id--, true});
  }
  out.push_back({"<image>", image_token_id, true});
  return out;
}

absl::Status TrainByteLevelBpe(const std::vector<std::string>& corpus, const BpeTrainOptions& options,
                               const std::string& dir) {
  auto regex = Regex::Compile(kLlama3Pattern);
  if (!regex.ok()) return regex.status();
  // Word frequencies.
  std::map<std::string, int64_t> words;
  for (const std::string& text : corpus) {
    if (!IsValidUtf8(text)) return absl::InvalidArgumentError("training text is not valid UTF-8");
    size_t last = 0;
    auto matched = (*regex)->ForEachMatch(text, [&](size_t b, size_t e) {
      if (b > last) ++words[text.substr(last, b - last)];
      ++words[text.substr(b, e - b)];
      last = e;
    });
    if (!matched.ok()) return matched;
    if (last < text.size()) ++words[text.substr(last)];
  }
  std::vector<std::string> tokens;  // id -> bytes
  for (int b = 0; b < 256; ++b) tokens.push_back(std::string(1, static_cast<char>(b)));
  std::vector<std::pair<std::vector<int32_t>, int64_t>> seqs;
  for (const auto& [w, n] : words) {
    std::vector<int32_t> ids;
    for (unsigned char c : w) ids.push_back(c);
    seqs.emplace_back(std::move(ids), n);
  }
  std::vector<std::pair<int32_t, int32_t>> merges;
  std::set<std::string> known(tokens.begin(), tokens.end());
  for (int m = 0; m < options.num_merges; ++m) {
    std::map<std::pair<int32_t, int32_t>, int64_t> counts;  // ordered: deterministic ties
    for (const auto& [ids, n] : seqs) {
      for (size_t i = 0; i + 1 < ids.size(); ++i) counts[{ids[i], ids[i + 1]}] += n;
    }
    std::pair<int32_t, int32_t> best{-1, -1};
    int64_t best_count = 1;  // a pair must occur at least twice to be worth a token
    for (const auto& [pair, n] : counts) {
      if (n > best_count && known.count(tokens[pair.first] + tokens[pair.second]) == 0) {
        best = pair;
        best_count = n;
      }
    }
    if (best.first < 0) break;
    const int32_t merged = static_cast<int32_t>(tokens.size());
    tokens.push_back(tokens[best.first] + tokens[best.second]);
    known.insert(tokens.back());
    merges.push_back(best);
    for (auto& [ids, n] : seqs) {
      std::vector<int32_t> next;
      for (size_t i = 0; i < ids.size(); ++i) {
        if (i + 1 < ids.size() && ids[i] == best.first && ids[i + 1] == best.second) {
          next.push_back(merged);
          ++i;
        } else {
          next.push_back(ids[i]);
        }
      }
      ids = std::move(next);
    }
  }
  // Reserved entries: a control byte then letters and digits, which the
  // pre-tokenizer always splits apart, so no input reaches them.
  for (int i = 0; i < options.reserved_pieces; ++i) {
    char name[16];
    std::snprintf(name, sizeof(name), "\x01" "act%03d", i);
    tokens.push_back(name);
  }
  for (const auto& a : options.added_tokens) {
    if (a.id < static_cast<int32_t>(tokens.size())) {
      return absl::InvalidArgumentError(absl::StrCat("added token ", a.content, " has id ", a.id,
                                                     " inside the learned vocabulary of ", tokens.size()));
    }
  }

  using nlohmann::json;
  json vocab = json::object();
  for (size_t id = 0; id < tokens.size(); ++id) vocab[BytesToPiece(tokens[id])] = id;
  json merge_list = json::array();
  for (const auto& [a, b] : merges) merge_list.push_back(BytesToPiece(tokens[a]) + " " + BytesToPiece(tokens[b]));
  json added = json::array();
  json added_decoder = json::object();
  for (const auto& a : options.added_tokens) {
    added.push_back({{"id", a.id}, {"content", a.content}, {"single_word", false}, {"lstrip", false},
                     {"rstrip", false}, {"normalized", false}, {"special", a.special}});
    added_decoder[std::to_string(a.id)] = {{"content", a.content}, {"special", a.special}};
  }
  json tok = {
      {"version", "1.0"},
      {"truncation", nullptr},
      {"padding", nullptr},
      {"added_tokens", added},
      {"normalizer", nullptr},
      {"pre_tokenizer",
       {{"type", "Sequence"},
        {"pretokenizers",
         {{{"type", "Split"}, {"pattern", {{"Regex", kLlama3Pattern}}}, {"behavior", "Isolated"}, {"invert", false}},
          {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"trim_offsets", true}, {"use_regex", false}}}}}},
      {"post_processor", {{"type", "ByteLevel"}, {"add_prefix_space", true}, {"trim_offsets", false}, {"use_regex", true}}},
      {"decoder", {{"type", "ByteLevel"}, {"add_prefix_space", true}, {"trim_offsets", true}, {"use_regex", true}}},
      {"model",
       {{"type", "BPE"}, {"dropout", nullptr}, {"unk_token", nullptr}, {"continuing_subword_prefix", nullptr},
        {"end_of_word_suffix", nullptr}, {"fuse_unk", false}, {"byte_fallback", false}, {"ignore_merges", true},
        {"vocab", vocab}, {"merges", merge_list}}}};
  json config = {{"bos_token", options.bos_token},
                 {"eos_token", options.eos_token},
                 {"clean_up_tokenization_spaces", false},
                 {"model_max_length", 8192},
                 {"tokenizer_class", "PreTrainedTokenizerFast"},
                 {"added_tokens_decoder", added_decoder}};
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  std::ofstream(std::filesystem::path(dir) / "tokenizer.json") << tok.dump(1) << "\n";
  std::ofstream(std::filesystem::path(dir) / "tokenizer_config.json") << config.dump(2) << "\n";
  return absl::OkStatus();
}

}  // namespace magma::tokenizer
