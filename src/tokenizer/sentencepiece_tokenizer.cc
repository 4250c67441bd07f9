// SentencePiece .model tokenizers through the facade library (spm_facade.h),
// opened with RTLD_DEEPBIND so that it keeps its own bundled protobuf.
#include <dlfcn.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <mutex>

#include <nlohmann/json.hpp>

#include "absl/container/flat_hash_map.h"
#include "absl/strings/str_cat.h"
#include "bpe_tokenizer.h"
#include "magma/tokenizer/tokenizer.h"
#include "spm_facade.h"
#include "tokenizer_config.h"

namespace magma::tokenizer {
namespace {

constexpr char kSpace[] = "\xE2\x96\x81";  // U+2581, SentencePiece's space

// The facade's entry points, resolved once per process.
struct Facade {
  decltype(&magma_spm_load) load;
  decltype(&magma_spm_free) free;
  decltype(&magma_spm_encode) encode;
  decltype(&magma_spm_vocab_size) vocab_size;
  decltype(&magma_spm_piece) piece;
  decltype(&magma_spm_piece_to_id) piece_to_id;
  decltype(&magma_spm_flags) flags;
  decltype(&magma_spm_special) special;
  decltype(&magma_spm_add_dummy_prefix) add_dummy_prefix;
};

absl::StatusOr<const Facade*> OpenFacade(const std::string& requested) {
#if defined(__SANITIZE_ADDRESS__)
  (void)requested;
  return absl::FailedPreconditionError(
      "SentencePiece tokenizers need dlopen(RTLD_DEEPBIND), which AddressSanitizer builds do not support");
#else
  static std::mutex mu;
  static Facade facade;
  static bool opened = false;
  std::lock_guard<std::mutex> lock(mu);
  if (opened) return &facade;
  std::vector<std::string> candidates;
  if (!requested.empty()) candidates.push_back(requested);
#ifdef MAGMA_SPM_FACADE_PATH
  candidates.push_back(MAGMA_SPM_FACADE_PATH);
#endif
  std::error_code ec;
  const auto exe = std::filesystem::read_symlink("/proc/self/exe", ec);
  if (!ec) candidates.push_back((exe.parent_path() / "libmagma_spm_facade.so").string());
  std::string errors;
  void* lib = nullptr;
  for (const auto& path : candidates) {
    lib = dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL | RTLD_DEEPBIND);
    if (lib != nullptr) break;
    absl::StrAppend(&errors, " ", path, ": ", dlerror(), ";");
  }
  if (lib == nullptr) {
    return absl::FailedPreconditionError(absl::StrCat("cannot open the SentencePiece facade library:", errors));
  }
  auto sym = [&](const char* name) { return dlsym(lib, name); };
  facade.load = reinterpret_cast<decltype(facade.load)>(sym("magma_spm_load"));
  facade.free = reinterpret_cast<decltype(facade.free)>(sym("magma_spm_free"));
  facade.encode = reinterpret_cast<decltype(facade.encode)>(sym("magma_spm_encode"));
  facade.vocab_size = reinterpret_cast<decltype(facade.vocab_size)>(sym("magma_spm_vocab_size"));
  facade.piece = reinterpret_cast<decltype(facade.piece)>(sym("magma_spm_piece"));
  facade.piece_to_id = reinterpret_cast<decltype(facade.piece_to_id)>(sym("magma_spm_piece_to_id"));
  facade.flags = reinterpret_cast<decltype(facade.flags)>(sym("magma_spm_flags"));
  facade.special = reinterpret_cast<decltype(facade.special)>(sym("magma_spm_special"));
  facade.add_dummy_prefix = reinterpret_cast<decltype(facade.add_dummy_prefix)>(sym("magma_spm_add_dummy_prefix"));
  if (!facade.load || !facade.free || !facade.encode || !facade.vocab_size || !facade.piece || !facade.piece_to_id ||
      !facade.flags || !facade.special || !facade.add_dummy_prefix) {
    return absl::FailedPreconditionError("the SentencePiece facade library lacks expected symbols");
  }
  opened = true;
  return &facade;
#endif
}

class SentencePieceTokenizer final : public Tokenizer {
 public:
  ~SentencePieceTokenizer() override {
    if (handle_ != nullptr) f_->free(handle_);
  }

  absl::Status Init(const Facade* f, const std::string& dir) {
    f_ = f;
    const std::string path = (std::filesystem::path(dir) / "tokenizer.model").string();
    char err[512] = {0};
    handle_ = f_->load(path.c_str(), err, sizeof(err));
    if (handle_ == nullptr) return absl::InvalidArgumentError(absl::StrCat(path, ": ", err));
    const int n = f_->vocab_size(handle_);
    bytes_.resize(n);
    pieces_.resize(n);
    flags_.resize(n);
    std::string buf(256, '\0');
    for (int id = 0; id < n; ++id) {
      int len = f_->piece(handle_, id, buf.data(), static_cast<int>(buf.size()));
      if (len > static_cast<int>(buf.size())) {
        buf.resize(len);
        len = f_->piece(handle_, id, buf.data(), len);
      }
      pieces_[id].assign(buf.data(), len);
      piece_to_id_[pieces_[id]] = id;
      flags_[id] = f_->flags(handle_, id);
      const std::string& p = pieces_[id];
      if (flags_[id] & 1) {
        bytes_[id] = "";  // control: <s>, </s>
      } else if (flags_[id] & 2) {
        bytes_[id] = " \xE2\x81\x87 ";  // SentencePiece's surface of <unk>
      } else if (flags_[id] & 4) {
        bytes_[id] = std::string(1, static_cast<char>(std::stoi(p.substr(3, 2), nullptr, 16)));  // <0xAB>
      } else {
        std::string s;
        for (size_t i = 0; i < p.size();) {
          if (p.compare(i, 3, kSpace) == 0) {
            s.push_back(' ');
            i += 3;
          } else {
            s.push_back(p[i++]);
          }
        }
        bytes_[id] = s;
      }
      if ((flags_[id] & 1) && !p.empty()) specials_.push_back({p, id});
    }
    dummy_prefix_ = f_->add_dummy_prefix(handle_) != 0;
    special_.bos = f_->special(handle_, 0);
    special_.eos = f_->special(handle_, 1);
    special_.pad = f_->special(handle_, 2);
    // A chat vocabulary ends turns with <|eot_id|> when it has one.
    special_.eot = PieceToId("<|eot_id|>") >= 0 ? PieceToId("<|eot_id|>") : special_.eos;
    special_.image = PieceToId("<image>");
    add_bos_ = special_.bos >= 0;
    std::ifstream cin(std::filesystem::path(dir) / "tokenizer_config.json");
    if (cin) {
      auto config = nlohmann::json::parse(cin, nullptr, /*allow_exceptions=*/false);
      if (config.is_object()) {
        ReadBoolSetting(config, "add_bos_token", &add_bos_);
        ReadBoolSetting(config, "add_eos_token", &add_eos_);
        ReadBoolSetting(config, "clean_up_tokenization_spaces", &clean_up_tokenization_spaces_);
      }
    }
    std::sort(specials_.begin(), specials_.end(),
              [](const auto& a, const auto& b) { return a.first.size() > b.first.size(); });
    return absl::OkStatus();
  }

  absl::StatusOr<std::vector<int32_t>> EncodeSegments(const std::vector<Segment>& segments,
                                                      bool add_special_tokens) const override {
    std::vector<int32_t> out;
    if (add_special_tokens && add_bos_ && special_.bos >= 0) out.push_back(special_.bos);
    std::string plain;
    auto flush = [&]() -> absl::Status {
      if (plain.empty()) return absl::OkStatus();
      std::vector<int> ids(plain.size() * 2 + 8);
      const int n = f_->encode(handle_, plain.data(), static_cast<int>(plain.size()), ids.data(),
                               static_cast<int>(ids.size()));
      if (n < 0) return absl::InvalidArgumentError("SentencePiece could not encode the text");
      if (n > static_cast<int>(ids.size())) {
        ids.resize(n);
        f_->encode(handle_, plain.data(), static_cast<int>(plain.size()), ids.data(), n);
      }
      out.insert(out.end(), ids.begin(), ids.begin() + n);
      plain.clear();
      return absl::OkStatus();
    };
    for (const Segment& seg : segments) {
      if (!IsValidUtf8(seg.text)) return absl::InvalidArgumentError("text is not valid UTF-8");
      if (!seg.parse_special) {
        plain += seg.text;
        continue;
      }
      // Control-token spellings ("<s>", "</s>") in trusted text; the text
      // between them is encoded chunk by chunk, as the Hugging Face Llama
      // tokenizer does (each chunk gets its own dummy prefix).
      const std::string& text = seg.text;
      size_t i = 0;
      while (i < text.size()) {
        const std::pair<std::string, int32_t>* hit = nullptr;
        for (const auto& s : specials_) {
          if (text.compare(i, s.first.size(), s.first) == 0) {
            hit = &s;
            break;
          }
        }
        if (hit == nullptr) {
          plain.push_back(text[i++]);
          continue;
        }
        if (auto s = flush(); !s.ok()) return s;
        out.push_back(hit->second);
        i += hit->first.size();
      }
    }
    if (auto s = flush(); !s.ok()) return s;
    if (add_special_tokens && add_eos_ && special_.eos >= 0) out.push_back(special_.eos);
    return out;
  }

  std::string TokenBytes(int32_t id, bool first) const override {
    if (id < 0 || id >= static_cast<int32_t>(bytes_.size())) return "";
    const std::string& b = bytes_[id];
    if (first && dummy_prefix_ && !b.empty() && b[0] == ' ') return b.substr(1);
    return b;
  }
  std::string IdToPiece(int32_t id) const override {
    return id >= 0 && id < static_cast<int32_t>(pieces_.size()) ? pieces_[id] : "";
  }
  int32_t PieceToId(absl::string_view piece) const override {
    auto it = piece_to_id_.find(piece);
    return it == piece_to_id_.end() ? -1 : it->second;
  }
  bool IsSpecial(int32_t id) const override {
    return id >= 0 && id < static_cast<int32_t>(flags_.size()) && (flags_[id] & 1);
  }
  int32_t vocab_size() const override { return static_cast<int32_t>(pieces_.size()); }
  int32_t base_vocab_size() const override { return static_cast<int32_t>(pieces_.size()); }
  const SpecialIds& special_ids() const override { return special_; }
  const char* kind() const override { return "sentencepiece"; }

 private:
  const Facade* f_ = nullptr;
  void* handle_ = nullptr;
  std::vector<std::string> bytes_, pieces_;
  std::vector<int> flags_;
  absl::flat_hash_map<std::string, int32_t> piece_to_id_;
  std::vector<std::pair<std::string, int32_t>> specials_;  // control spellings, longest first
  bool dummy_prefix_ = true;
  bool add_bos_ = true, add_eos_ = false;
  SpecialIds special_;
};

}  // namespace

absl::StatusOr<std::unique_ptr<Tokenizer>> LoadTokenizer(const std::string& dir, const LoadOptions& options) {
  namespace fs = std::filesystem;
  std::error_code ec;
  if (fs::exists(fs::path(dir) / "tokenizer.json", ec)) return LoadBpeTokenizer(dir);
  if (!fs::exists(fs::path(dir) / "tokenizer.model", ec)) {
    return absl::NotFoundError(absl::StrCat("no tokenizer.json or tokenizer.model in '", dir, "'"));
  }
  auto facade = OpenFacade(options.sentencepiece_facade);
  if (!facade.ok()) return facade.status();
  auto t = std::make_unique<SentencePieceTokenizer>();
  if (auto s = t->Init(*facade, dir); !s.ok()) return s;
  return std::unique_ptr<Tokenizer>(std::move(t));
}

}  // namespace magma::tokenizer
