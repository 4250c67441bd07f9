// magma-tokenizer-bench: encode throughput of the tokenizer.json BPE on a
// mixed corpus, single thread, next to the JavaScript reference.
//
//   magma-tokenizer-bench --model_dir D [--megabytes 10] [--corpus_out F]
#include <chrono>
#include <fstream>
#include <iostream>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "magma/tokenizer/tokenizer.h"
#include "tokenizer/corpus.h"

ABSL_FLAG(std::string, model_dir, "", "Directory with tokenizer.json");
ABSL_FLAG(int, megabytes, 10, "Corpus size");
ABSL_FLAG(std::string, corpus_out, "", "Also write the corpus here (one text per line) for other tools");

int main(int argc, char** argv) {
  absl::ParseCommandLine(argc, argv);
  auto tok = magma::tokenizer::LoadTokenizer(absl::GetFlag(FLAGS_model_dir));
  if (!tok.ok()) {
    std::cerr << tok.status() << "\n";
    return 1;
  }
  // Mixed text: the edge-case corpus, each string on its own line.
  std::string corpus;
  const size_t target = static_cast<size_t>(absl::GetFlag(FLAGS_megabytes)) << 20;
  for (uint32_t seed = 1; corpus.size() < target; ++seed) {
    for (auto s : magma::testing::TokenizerCorpus(2000, seed)) {
      for (char& c : s) {
        if (c == '\n' || c == '\r') c = ' ';
      }
      corpus += s;
      corpus += '\n';
    }
  }
  if (!absl::GetFlag(FLAGS_corpus_out).empty()) std::ofstream(absl::GetFlag(FLAGS_corpus_out)) << corpus;
  std::vector<std::string> lines;
  size_t start = 0;
  while (start < corpus.size()) {
    size_t end = corpus.find('\n', start);
    lines.push_back(corpus.substr(start, end - start));
    start = end + 1;
  }
  size_t tokens = 0;
  const auto t0 = std::chrono::steady_clock::now();
  for (const auto& line : lines) tokens += (*tok)->Encode(line, /*parse_special=*/true)->size();
  const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::cout << "encode_mb_per_s[magma-serve,1 thread]: " << corpus.size() / 1e6 / s << " MB/s (" << tokens
            << " tokens, " << corpus.size() / 1e6 << " MB, " << s << " s)\n";
  return 0;
}
