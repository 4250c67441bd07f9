#include "magma/engine/engine.h"

#include <future>
#include <map>
#include <random>

#include <gtest/gtest.h>

#include "engine/fake_runner.h"
#include "magma/tokenizer/bpe_trainer.h"
#include "testing/temp_dir.h"

namespace magma::engine {
namespace {

using testing::FakeRunner;
using testing::HashLogits;

constexpr int32_t kVocab = 300;  // byte-level ids 0..255 + a few specials
constexpr int32_t kEos = 290;

// Waits for results of submitted requests.
struct Collector {
  std::mutex mu;
  std::condition_variable cv;
  std::map<int, GenerationResult> results;
  std::map<int, std::string> streamed;
  std::map<int, int> done_calls;

  RequestCallbacks For(int key) {
    RequestCallbacks cb;
    cb.on_delta = [this, key](const StreamDelta& d) {
      std::lock_guard<std::mutex> lock(mu);
      streamed[key] += d.text;
    };
    cb.on_done = [this, key](GenerationResult r) {
      std::lock_guard<std::mutex> lock(mu);
      results[key] = std::move(r);
      done_calls[key]++;
      cv.notify_all();
    };
    return cb;
  }
  void WaitFor(size_t n) {
    std::unique_lock<std::mutex> lock(mu);
    ASSERT_TRUE(cv.wait_for(lock, std::chrono::seconds(60), [&] { return results.size() >= n; }))
        << "only " << results.size() << " of " << n << " requests finished";
  }
};

GenerationRequest Prompt(std::vector<int32_t> ids, int max_new, float temperature, uint64_t seed) {
  GenerationRequest r;
  r.prompt_ids = std::move(ids);
  r.max_new_tokens = max_new;
  r.sampling.temperature = temperature;
  r.sampling.seed = seed;
  return r;
}

// Blank crops on a rows x cols grid of 8-pixel tiles; the fake runner
// encodes each crop into 3 positions.
std::shared_ptr<vision::Crops> BlankCrops(int rows, int cols) {
  auto crops = std::make_shared<vision::Crops>();
  crops->grid = {rows, cols};
  crops->base = 8;
  crops->pixels.assign(static_cast<size_t>(rows * cols) * 3 * 8 * 8, 0.f);
  return crops;
}

FakeRunner::Script Hashed() {
  return [](const std::vector<int32_t>& t) { return HashLogits(t, kVocab); };
}

// Submits `n` prompts about one screenshot, each after the one before has
// ended; they differ only after the image.
void AskAboutOneScreen(Engine* engine, const std::shared_ptr<vision::Crops>& crops, int n, Collector* c) {
  for (int i = 0; i < n; ++i) {
    auto req = Prompt({1, 2, 3, kVocab - 1, 10, 11 + i, 12}, 5, 0, 0);
    req.images.push_back({crops, "screen"});
    ASSERT_TRUE(engine->Submit(req, c->For(i)).ok());
    c->WaitFor(static_cast<size_t>(i + 1));
  }
}

// The same requests alone and together give the same tokens.
TEST(EngineTest, BatchingDoesNotChangeResults) {
  std::vector<GenerationRequest> reqs;
  for (int i = 0; i < 6; ++i) {
    reqs.push_back(Prompt({1, 2 + i, 3 * i + 1, 7}, 12 + i, i % 2 ? 0.8f : 0.0f, 100 + i));
  }
  std::map<int, std::vector<int32_t>> alone;
  for (int i = 0; i < 6; ++i) {
    auto runner = std::make_unique<FakeRunner>(kVocab, 1, 64, Hashed());
    Engine engine(std::move(runner), nullptr, {});
    Collector c;
    ASSERT_TRUE(engine.Submit(reqs[i], c.For(i)).ok());
    c.WaitFor(1);
    alone[i] = c.results[i].token_ids;
    EXPECT_EQ(alone[i].size(), static_cast<size_t>(12 + i));
  }
  auto runner = std::make_unique<FakeRunner>(kVocab, 8, 64, Hashed());
  FakeRunner* fake = runner.get();
  fake->CloseGate();  // let all requests arrive before the first decode step
  Engine engine(std::move(runner), nullptr, {});
  Collector c;
  for (int i = 5; i >= 0; --i) ASSERT_TRUE(engine.Submit(reqs[i], c.For(i)).ok());
  fake->OpenGate();
  c.WaitFor(6);
  for (int i = 0; i < 6; ++i) {
    EXPECT_EQ(c.results[i].token_ids, alone[i]) << "request " << i;
    EXPECT_EQ(c.results[i].finish_reason, FinishReason::kLength);
  }
  const auto sizes = fake->batch_sizes();
  EXPECT_GT(*std::max_element(sizes.begin(), sizes.end()), 1) << "decode steps were never batched";
  EXPECT_EQ(fake->free_slots(), 8);
}

TEST(EngineTest, SeedsMakeSamplingReproducible) {
  auto run = [](uint64_t seed) {
    Engine engine(std::make_unique<FakeRunner>(kVocab, 2, 64, Hashed()), nullptr, {});
    Collector c;
    EXPECT_TRUE(engine.Submit(Prompt({5, 6, 7}, 20, 1.0f, seed), c.For(0)).ok());
    c.WaitFor(1);
    return c.results[0].token_ids;
  };
  EXPECT_EQ(run(42), run(42));
  EXPECT_NE(run(42), run(43));
}

TEST(EngineTest, StopTokenEndsGeneration) {
  // Script: after the prompt, tokens 10, 11, EOS.
  auto script = [](const std::vector<int32_t>& t) {
    std::vector<float> l(kVocab, 0);
    const size_t generated = t.size() - 3;
    l[generated == 0 ? 10 : generated == 1 ? 11 : kEos] = 5;
    return l;
  };
  Engine engine(std::make_unique<FakeRunner>(kVocab, 1, 64, script), nullptr, {});
  Collector c;
  auto req = Prompt({1, 2, 3}, 50, 0, 0);
  req.stop_token_ids = {kEos};
  ASSERT_TRUE(engine.Submit(req, c.For(0)).ok());
  c.WaitFor(1);
  EXPECT_EQ(c.results[0].token_ids, (std::vector<int32_t>{10, 11, kEos}));
  EXPECT_EQ(c.results[0].finish_reason, FinishReason::kStopToken);
  EXPECT_TRUE(c.results[0].status.ok());
  EXPECT_EQ(c.results[0].timings.prompt_tokens, 3);
  EXPECT_EQ(c.results[0].timings.output_tokens, 3);
}

// A tokenizer whose ids 0..255 are the bytes themselves.
std::shared_ptr<const tokenizer::Tokenizer> ByteTokenizer(const std::string& dir) {
  tokenizer::BpeTrainOptions o;
  o.num_merges = 0;
  o.added_tokens = {{"<|begin_of_text|>", 289, true}, {"<|end_of_text|>", kEos, true}};
  EXPECT_TRUE(tokenizer::TrainByteLevelBpe({"x"}, o, dir).ok());
  auto t = tokenizer::LoadTokenizer(dir);
  EXPECT_TRUE(t.ok()) << t.status();
  return std::shared_ptr<const tokenizer::Tokenizer>(std::move(*t));
}

// Logits that spell `text` byte by byte after a 1-token prompt.
FakeRunner::Script Spell(std::string text) {
  return [text](const std::vector<int32_t>& t) {
    std::vector<float> l(kVocab, 0);
    const size_t i = t.size() - 1;
    l[i < text.size() ? static_cast<unsigned char>(text[i]) : kEos] = 5;
    return l;
  };
}

TEST(EngineTest, StopStringsCutTheTextAndStreamingNeverLeaksThem) {
  testing::TempDir dir;
  auto tok = ByteTokenizer(dir.path());
  Engine engine(std::make_unique<FakeRunner>(kVocab, 1, 128, Spell("caf\xC3\xA9 au lait STOP and more")), tok, {});
  Collector c;
  auto req = Prompt({1}, 100, 0, 0);
  req.stop_strings = {"STOP", "never"};
  req.stream = true;
  ASSERT_TRUE(engine.Submit(req, c.For(0)).ok());
  c.WaitFor(1);
  EXPECT_EQ(c.results[0].finish_reason, FinishReason::kStopString);
  EXPECT_EQ(c.results[0].text, "caf\xC3\xA9 au lait ");
  EXPECT_EQ(c.streamed[0], c.results[0].text);
}

// With Llama-3's clean_up_tokenization_spaces the text loses the space
// before "," and "."; a stop string in the text the decoder still holds
// back for the clean-up stops the answer at once.
TEST(EngineTest, CleansUpSpacesAndFindsStopStringsInHeldText) {
  testing::TempDir dir;
  ByteTokenizer(dir.path());
  testing::WriteFile(dir.File("tokenizer_config.json"), R"({"clean_up_tokenization_spaces": true})");
  auto loaded = tokenizer::LoadTokenizer(dir.path());
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  std::shared_ptr<const tokenizer::Tokenizer> tok(std::move(*loaded));
  const std::string spelled = "yes , it is . a n't b";
  auto run = [&](const std::vector<std::string>& stops) {
    Engine engine(std::make_unique<FakeRunner>(kVocab, 1, 128, Spell(spelled)), tok, {});
    Collector c;
    auto req = Prompt({1}, 100, 0, 0);
    req.stop_token_ids = {kEos};
    req.stop_strings = stops;
    req.stream = true;
    EXPECT_TRUE(engine.Submit(req, c.For(0)).ok());
    c.WaitFor(1);
    EXPECT_EQ(c.streamed[0], c.results[0].text);
    return c.results[0];
  };
  const auto plain = run({});
  EXPECT_EQ(plain.text, "yes, it is. an't b");
  EXPECT_EQ(plain.finish_reason, FinishReason::kStopToken);
  // " n'" waits for what follows (it may become "n't"), yet the stop string
  // in it ends the answer with the token that completed it.
  const auto stopped = run({"n'"});
  EXPECT_EQ(stopped.text, "yes, it is. a ");
  EXPECT_EQ(stopped.finish_reason, FinishReason::kStopString);
  EXPECT_EQ(stopped.token_ids.size(), spelled.find('\'') + 1);
}

// The answer under CompileChoices(choices) over one-byte tokens that
// `end_ids` may end, from a model that would rather write "Mark: 9".
GenerationResult AnswerWithChoices(const std::vector<std::string>& choices, std::vector<int32_t> end_ids) {
  testing::TempDir dir;
  auto tok = ByteTokenizer(dir.path());
  std::vector<std::string> bytes(kVocab);
  for (int i = 0; i < 256; ++i) bytes[i] = std::string(1, static_cast<char>(i));
  auto grammar = CompileChoices(choices, std::make_shared<TokenTable>(bytes, std::move(end_ids)));
  EXPECT_TRUE(grammar.ok()) << grammar.status();
  if (!grammar.ok()) return {};
  Engine engine(std::make_unique<FakeRunner>(kVocab, 1, 64, Spell("Mark: 9")), tok, {});
  Collector c;
  auto req = Prompt({1}, 30, 0, 0);
  req.grammar = *grammar;
  if (!engine.Submit(req, c.For(0)).ok()) {
    ADD_FAILURE() << "the request was refused";
    return {};
  }
  c.WaitFor(1);
  return c.results[0];
}

TEST(EngineTest, GrammarRestrictsTheOutput) {
  // The grammar must steer the model to an existing mark.
  const GenerationResult r = AnswerWithChoices({"Mark: 3", "Mark: 17"}, {kEos});
  EXPECT_TRUE(r.text == "Mark: 3" || r.text == "Mark: 17") << r.text;
  EXPECT_EQ(r.finish_reason, FinishReason::kGrammar);
}

// With no end token to write (a tokenizer without EOS or end of turn), a
// constrained answer ends once it is whole and nothing can follow.
TEST(EngineTest, GrammarWithoutAnEndTokenEndsAtAWholeAnswer) {
  const GenerationResult r = AnswerWithChoices({"Mark: 3"}, {});
  EXPECT_TRUE(r.status.ok()) << r.status;
  EXPECT_EQ(r.text, "Mark: 3");
  EXPECT_EQ(r.finish_reason, FinishReason::kGrammar);
}

TEST(EngineTest, ManyCancellationsFreeEverySlot) {
  auto runner = std::make_unique<FakeRunner>(kVocab, 4, 4096, Hashed());
  FakeRunner* fake = runner.get();
  EngineOptions o;
  o.max_queue = 200;
  o.max_batch = 4;
  Engine engine(std::move(runner), nullptr, o);
  Collector c;
  std::vector<std::shared_ptr<RequestHandle>> handles;
  fake->CloseGate();  // no request can run to its length before it is cancelled
  for (int i = 0; i < 60; ++i) {
    auto h = engine.Submit(Prompt({1, i + 2}, 3000, 1.0f, i), c.For(i));
    ASSERT_TRUE(h.ok());
    handles.push_back(*h);
  }
  std::mt19937 rng(1);
  std::shuffle(handles.begin(), handles.end(), rng);
  for (auto& h : handles) h->Cancel();
  fake->OpenGate();
  c.WaitFor(60);
  for (auto& [key, r] : c.results) {
    EXPECT_EQ(r.finish_reason, FinishReason::kCancelled);
    EXPECT_EQ(r.status.code(), absl::StatusCode::kCancelled);
    EXPECT_EQ(c.done_calls[key], 1);
  }
  // The engine thread releases slots before calling on_done.
  EXPECT_EQ(fake->free_slots(), 4);
  EXPECT_EQ(engine.Stats().running, 0);
}

TEST(EngineTest, DeadlineExpiresTheRequest) {
  Engine engine(std::make_unique<FakeRunner>(kVocab, 1, 100000, Hashed()), nullptr, {});
  Collector c;
  auto req = Prompt({1, 2}, 90000, 1.0f, 0);
  req.deadline = absl::Now() + absl::Milliseconds(50);
  ASSERT_TRUE(engine.Submit(req, c.For(0)).ok());
  c.WaitFor(1);
  EXPECT_EQ(c.results[0].finish_reason, FinishReason::kDeadline);
  EXPECT_EQ(c.results[0].status.code(), absl::StatusCode::kDeadlineExceeded);
}

// An engine whose runner (`slots` KV slots) blocks at its closed gate.
std::unique_ptr<Engine> GatedEngine(int slots, int max_queue, int max_batch, FakeRunner** fake) {
  auto runner = std::make_unique<FakeRunner>(kVocab, slots, 64, Hashed());
  *fake = runner.get();
  (*fake)->CloseGate();
  EngineOptions o;
  o.max_queue = max_queue;
  o.max_batch = max_batch;
  return std::make_unique<Engine>(std::move(runner), nullptr, o);
}

TEST(EngineTest, FullQueueIsResourceExhaustedAndCapacityQueues) {
  FakeRunner* fake = nullptr;
  auto engine = GatedEngine(1, 3, 1, &fake);
  Collector c;
  int accepted = 0, rejected = 0;
  // One runs (and blocks in the gate), three wait, the rest are refused.
  for (int i = 0; i < 8; ++i) {
    auto h = engine->Submit(Prompt({1, i}, 4, 0, 0), c.For(i));
    if (h.ok()) {
      ++accepted;
    } else {
      EXPECT_EQ(h.status().code(), absl::StatusCode::kResourceExhausted);
      EXPECT_NE(h.status().message().find("queue is full"), std::string::npos);
      ++rejected;
    }
    // The first request is in the batch once the engine blocks decoding it.
    if (i == 0) fake->WaitUntilBlocked();
  }
  EXPECT_EQ(accepted, 4);
  EXPECT_EQ(rejected, 4);
  fake->OpenGate();
  c.WaitFor(static_cast<size_t>(accepted));
  for (auto& [k, r] : c.results) EXPECT_EQ(r.token_ids.size(), 4u);  // one slot: served in turn
}

// max_queue counts the requests that wait for a place in the batch, not
// those the batch can take at once: with no queue, an idle engine still runs
// a batch's worth.
TEST(EngineTest, RequestsThatFitTheBatchDoNotCountAgainstTheQueue) {
  FakeRunner* fake = nullptr;
  auto engine = GatedEngine(2, 0, 2, &fake);
  Collector c;
  ASSERT_TRUE(engine->Submit(Prompt({1, 2}, 4, 0, 0), c.For(0)).ok());
  fake->WaitUntilBlocked();  // one runs, one place left
  ASSERT_TRUE(engine->Submit(Prompt({1, 3}, 4, 0, 0), c.For(1)).ok());
  auto refused = engine->Submit(Prompt({1, 4}, 4, 0, 0), c.For(2));
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kResourceExhausted) << refused.status();
  fake->OpenGate();
  c.WaitFor(2);
  for (int k = 0; k < 2; ++k) EXPECT_EQ(c.results[k].token_ids.size(), 4u) << k;
}

// A grammar whose next ids all lie past the model's vocabulary fails its
// request instead of sampling from nothing.
TEST(EngineTest, GrammarWithNoIdInTheModelsVocabularyFailsTheRequest) {
  Engine engine(std::make_unique<FakeRunner>(kVocab, 1, 64, Hashed()), nullptr, {});
  Collector c;
  auto req = Prompt({1}, 8, 0, 0);
  req.grammar = TokenSequenceGrammar({kVocab, kVocab + 5}, 2, {2});
  ASSERT_TRUE(engine.Submit(req, c.For(0)).ok());
  c.WaitFor(1);
  EXPECT_EQ(c.results[0].status.code(), absl::StatusCode::kFailedPrecondition) << c.results[0].status;
  EXPECT_TRUE(c.results[0].token_ids.empty());
}

TEST(EngineTest, SubmitValidation) {
  Engine engine(std::make_unique<FakeRunner>(kVocab, 1, 32, Hashed()), nullptr, {});
  Collector c;
  EXPECT_EQ(engine.Submit(Prompt({}, 4, 0, 0), c.For(0)).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(engine.Submit(Prompt({1, 5000}, 4, 0, 0), c.For(0)).status().code(), absl::StatusCode::kInvalidArgument);
  auto over = engine.Submit(Prompt({1, 2, 3}, 30, 0, 0), c.For(0));
  EXPECT_EQ(over.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_NE(over.status().message().find("context of 32"), std::string::npos) << over.status();
  auto img = Prompt({1, kVocab - 1}, 4, 0, 0);  // an image token without an image
  EXPECT_EQ(engine.Submit(img, c.For(0)).status().code(), absl::StatusCode::kInvalidArgument);
  auto bad = Prompt({1}, 4, -1, 0);
  EXPECT_EQ(engine.Submit(bad, c.For(0)).status().code(), absl::StatusCode::kInvalidArgument);
  engine.Shutdown();
  EXPECT_EQ(engine.Submit(Prompt({1}, 4, 0, 0), c.For(0)).status().code(), absl::StatusCode::kUnavailable);
}

// A budget the server chose itself is shortened to what the context leaves;
// a prompt that fills the context is still refused.
TEST(EngineTest, FitContextShortensTheServersOwnBudget) {
  Engine engine(std::make_unique<FakeRunner>(kVocab, 1, 32, Hashed()), nullptr, {});
  Collector c;
  auto fit = Prompt({1, 2, 3}, 30, 0, 0);
  fit.fit_context = true;
  ASSERT_TRUE(engine.Submit(fit, c.For(0)).ok());
  c.WaitFor(1);
  EXPECT_EQ(c.results[0].token_ids.size(), 29u);  // 32 - 3, no stop token set
  EXPECT_EQ(c.results[0].finish_reason, FinishReason::kLength);
  auto full = Prompt(std::vector<int32_t>(32, 1), 4, 0, 0);
  full.fit_context = true;
  auto refused = engine.Submit(full, c.For(1));
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_NE(refused.status().message().find("the prompt (32 positions)"), std::string::npos) << refused.status();
}

// With a grammar, a room shorter than its shortest answer (here seven
// tokens and an end token) is refused before the prefill; a room that
// holds it runs.
TEST(EngineTest, FitContextRefusesARoomShorterThanTheGrammarsShortestAnswer) {
  Engine engine(std::make_unique<FakeRunner>(kVocab, 1, 32, Hashed()), nullptr, {});
  Collector c;
  auto tight = Prompt(std::vector<int32_t>(25, 1), 30, 0, 0);  // 7 positions left
  tight.fit_context = true;
  tight.grammar = TokenSequenceGrammar({10, 11, 12}, 7, {2});
  auto refused = engine.Submit(tight, c.For(0));
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_NE(refused.status().message().find("the prompt (25 positions) leaves 7 of the context's 32 positions"),
            std::string::npos)
      << refused.status();
  auto fits = Prompt(std::vector<int32_t>(24, 1), 30, 0, 0);  // 8 left
  fits.fit_context = true;
  fits.stop_token_ids = {2};
  fits.grammar = TokenSequenceGrammar({10, 11, 12}, 7, {2});
  ASSERT_TRUE(engine.Submit(fits, c.For(1)).ok());
  c.WaitFor(1);
  EXPECT_TRUE(c.results[1].status.ok()) << c.results[1].status;
  EXPECT_EQ(c.results[1].token_ids.size(), 8u);  // the seven tokens and the end token
  EXPECT_NE(c.results[1].finish_reason, FinishReason::kLength);
}

TEST(EngineTest, VisionCacheHitsSkipEncoding) {
  auto runner = std::make_unique<FakeRunner>(kVocab, 2, 128, Hashed());
  FakeRunner* fake = runner.get();
  Engine engine(std::move(runner), nullptr, {});
  auto crops = BlankCrops(2, 2);
  Collector c;
  for (int i = 0; i < 3; ++i) {
    auto req = Prompt({1, kVocab - 1, 5}, 3, 0, 0);
    req.images.push_back({crops, "image-a"});
    ASSERT_TRUE(engine.Submit(req, c.For(i)).ok());
    c.WaitFor(static_cast<size_t>(i + 1));
  }
  EXPECT_EQ(fake->encodes(), 1);
  EXPECT_EQ(c.results[0].timings.vision_cache_misses, 1);
  EXPECT_EQ(c.results[1].timings.vision_cache_hits, 1);
  EXPECT_EQ(c.results[2].timings.vision_cache_hits, 1);
  EXPECT_EQ(c.results[0].timings.prompt_tokens, 2 + 12);  // 2 text + 4 crops x 3
  const EngineStats s = engine.Stats();
  EXPECT_EQ(s.vision_cache_hits, 2);
  EXPECT_EQ(s.vision_cache_misses, 1);
}

TEST(EngineTest, PromptPrefixEndingWithAnImageIsReused) {
  auto runner = std::make_unique<FakeRunner>(kVocab, 2, 256, Hashed());
  FakeRunner* fake = runner.get();
  EngineOptions o;
  o.prefill_chunk_tokens = 5;  // the prefix spans several chunks
  Engine engine(std::move(runner), nullptr, o);
  auto crops = BlankCrops(1, 2);
  Collector c;
  // Same screenshot, different questions after it.
  AskAboutOneScreen(&engine, crops, 3, &c);
  EXPECT_EQ(fake->encodes(), 1);
  EXPECT_EQ(fake->prefix_saves(), 1);
  EXPECT_EQ(fake->prefix_restores(), 2);
  for (int i = 1; i < 3; ++i) {
    EXPECT_EQ(c.results[i].timings.vision_cache_hits, 1);
    EXPECT_EQ(c.results[i].timings.prompt_tokens, 3 + 6 + 3);
  }
  // The same outputs as without any caching.
  auto plain = std::make_unique<FakeRunner>(kVocab, 2, 256, Hashed());
  EngineOptions no_cache;
  no_cache.prefix_cache_bytes = 0;
  no_cache.vision_cache_bytes = 0;
  Engine reference(std::move(plain), nullptr, no_cache);
  Collector r;
  AskAboutOneScreen(&reference, crops, 3, &r);
  for (int i = 0; i < 3; ++i) EXPECT_EQ(r.results[i].token_ids, c.results[i].token_ids) << i;
}

// A prefix larger than the whole prefix cache is not copied out of the KV
// cache only to be dropped.
TEST(EngineTest, PrefixLargerThanTheCacheIsNotCopied) {
  auto runner = std::make_unique<FakeRunner>(kVocab, 2, 256, Hashed());
  FakeRunner* fake = runner.get();
  EngineOptions o;
  o.prefix_cache_bytes = 8;  // the fake's KV takes a byte a position: 9 do not fit
  Engine engine(std::move(runner), nullptr, o);
  auto crops = BlankCrops(1, 2);
  Collector c;
  AskAboutOneScreen(&engine, crops, 2, &c);
  for (int i = 0; i < 2; ++i) EXPECT_TRUE(c.results[i].status.ok()) << c.results[i].status;
  EXPECT_EQ(fake->prefix_saves(), 0);
  EXPECT_EQ(fake->prefix_restores(), 0);
}

// Encoding an image is prefill work: a request whose images need more than
// the budget an iteration has left waits for the next one, instead of
// stalling the decoding streams for a chunk and an encode together.
TEST(EngineTest, ImageEncodingCountsAgainstThePrefillBudget) {
  auto runner = std::make_unique<FakeRunner>(kVocab, 4, 256, Hashed());
  FakeRunner* fake = runner.get();
  EngineOptions o;
  o.prefill_chunk_tokens = 10;
  Engine engine(std::move(runner), nullptr, o);
  Collector c;
  // A stream that decodes all along: its steps mark the iterations.
  fake->CloseGate();
  ASSERT_TRUE(engine.Submit(Prompt({1, 2}, 40, 0, 0), c.For(0)).ok());
  fake->WaitUntilBlocked();
  // A text prompt of 25 positions (chunks of 10, 10, 5), then a request
  // whose image takes 6 positions: more than the 5 left after the last chunk.
  ASSERT_TRUE(engine.Submit(Prompt(std::vector<int32_t>(25, 7), 5, 0, 0), c.For(1)).ok());
  auto crops = BlankCrops(1, 2);
  auto with_image = Prompt({1, kVocab - 1, 3}, 5, 0, 0);
  with_image.images.push_back({crops, "image"});
  ASSERT_TRUE(engine.Submit(with_image, c.For(2)).ok());
  fake->OpenGate();
  c.WaitFor(3);
  for (int i = 0; i < 3; ++i) EXPECT_TRUE(c.results[i].status.ok()) << c.results[i].status;
  // Between two decode steps, prefill and encoding stay within the budget.
  const std::vector<std::string> events = fake->events();
  int encodes = 0;
  std::string iteration;
  int64_t work = 0;
  for (const std::string& e : events) {
    if (e == "D") {
      EXPECT_LE(work, 10) << "an iteration did " << iteration;
      iteration.clear();
      work = 0;
      continue;
    }
    encodes += e[0] == 'E' ? 1 : 0;
    iteration += e + " ";
    work += std::stoll(e.substr(1));
  }
  EXPECT_EQ(encodes, 1);
}

TEST(EngineTest, LongPrefillIsChunkedUnderTheBudget) {
  auto runner = std::make_unique<FakeRunner>(kVocab, 2, 4096, Hashed());
  FakeRunner* fake = runner.get();
  EngineOptions o;
  o.prefill_chunk_tokens = 100;
  Engine engine(std::move(runner), nullptr, o);
  Collector c;
  std::vector<int32_t> ids(1050, 7);
  ASSERT_TRUE(engine.Submit(Prompt(ids, 2, 0, 0), c.For(0)).ok());
  c.WaitFor(1);
  const auto chunks = fake->prefill_chunks();
  ASSERT_EQ(chunks.size(), 11u);
  for (size_t i = 0; i + 1 < chunks.size(); ++i) EXPECT_EQ(chunks[i], 100);
  EXPECT_EQ(chunks.back(), 50);
}

}  // namespace
}  // namespace magma::engine
