#include "magma/tokenizer/spm_trainer.h"

#include <fcntl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>

#include <nlohmann/json.hpp>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace magma::tokenizer {
namespace {

namespace fs = std::filesystem;

void PutVarint(std::string* out, uint64_t v) {
  while (v >= 0x80) {
    out->push_back(static_cast<char>((v & 0x7f) | 0x80));
    v >>= 7;
  }
  out->push_back(static_cast<char>(v));
}

// Runs argv[0] with its output in `log`; returns the exit status or -1.
int Run(const std::vector<std::string>& argv, const std::string& log) {
  const pid_t pid = fork();
  if (pid < 0) return -1;
  if (pid == 0) {
    const int fd = open(log.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd >= 0) {
      dup2(fd, 1);
      dup2(fd, 2);
    }
    std::vector<char*> args;
    for (const auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
    args.push_back(nullptr);
    execvp(args[0], args.data());
    _exit(127);
  }
  int status = 0;
  if (waitpid(pid, &status, 0) < 0) return -1;
  return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

}  // namespace

std::string AppendReservedPieces(std::string model, int count) {
  for (int i = 0; i < count; ++i) {
    const std::string name = absl::StrCat("<action_", i, ">");
    std::string piece;
    piece.push_back(0x0a);  // field 1 (piece), length-delimited
    PutVarint(&piece, name.size());
    piece += name;
    piece.push_back(0x15);  // field 2 (score), 32-bit float 0
    piece.append(4, '\0');
    piece.push_back(0x18);  // field 3 (type), varint
    piece.push_back(5);     // UNUSED
    model.push_back(0x0a);  // ModelProto field 1 (pieces), length-delimited
    PutVarint(&model, piece.size());
    model += piece;
  }
  return model;
}

absl::Status TrainSentencePiece(const std::vector<std::string>& corpus, const SpmTrainOptions& o,
                                const std::string& dir) {
  if (o.vocab_size < 300) return absl::InvalidArgumentError("SentencePiece vocab_size must be >= 300 (256 bytes)");
  std::error_code ec;
  fs::create_directories(dir, ec);
  const fs::path work = fs::path(dir) / ".spm-train";
  fs::create_directories(work, ec);
  if (ec) return absl::InternalError(absl::StrCat("cannot create ", work.string(), ": ", ec.message()));
  {
    std::ofstream out(work / "corpus.txt");
    for (std::string line : corpus) {
      for (char& c : line) {
        if (c == '\n' || c == '\r') c = ' ';
      }
      if (!line.empty()) out << line << "\n";
    }
    if (!out) return absl::InternalError("cannot write the tokenizer corpus");
  }
  const std::string prefix = (work / "spm").string();
  const std::vector<std::string> argv = {
      o.program,
      "--input=" + (work / "corpus.txt").string(),
      "--model_prefix=" + prefix,
      absl::StrCat("--vocab_size=", o.vocab_size),
      "--hard_vocab_limit=false",
      "--model_type=bpe",
      "--byte_fallback=true",
      "--split_digits=true",
      "--normalization_rule_name=identity",
      "--remove_extra_whitespaces=false",
      "--add_dummy_prefix=true",
      "--character_coverage=1.0",
      "--num_threads=1",
      "--bos_piece=" + o.bos_piece,
      "--eos_piece=" + o.eos_piece,
      "--control_symbols=" + absl::StrJoin(o.control_symbols, ","),
  };
  const std::string log = (work / "spm_train.log").string();
  const int rc = Run(argv, log);
  if (rc == 127 || rc < 0) {
    return absl::FailedPreconditionError(
        absl::StrCat("cannot run '", o.program, "' (Debian package sentencepiece)"));
  }
  if (rc != 0) {
    std::ifstream in(log);
    std::stringstream text;
    text << in.rdbuf();
    std::string tail = text.str();
    if (tail.size() > 2000) tail = tail.substr(tail.size() - 2000);
    return absl::InternalError(absl::StrCat(o.program, " failed (exit ", rc, "): ", tail));
  }
  std::ifstream in(prefix + ".model", std::ios::binary);
  std::stringstream bytes;
  bytes << in.rdbuf();
  if (!in) return absl::InternalError(absl::StrCat(o.program, " wrote no model"));
  std::ofstream out(fs::path(dir) / "tokenizer.model", std::ios::binary);
  out << AppendReservedPieces(bytes.str(), o.reserved_pieces);
  if (!out) return absl::InternalError("cannot write tokenizer.model");
  nlohmann::json config = {{"tokenizer_class", "LlamaTokenizer"},
                           {"add_bos_token", false},
                           {"add_eos_token", false},
                           {"bos_token", o.bos_piece},
                           {"eos_token", o.eos_piece},
                           {"legacy", true}};
  std::ofstream(fs::path(dir) / "tokenizer_config.json") << config.dump(2) << "\n";
  fs::remove_all(work, ec);
  return absl::OkStatus();
}

}  // namespace magma::tokenizer
