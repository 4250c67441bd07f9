#include "magma/engine/constraint.h"

#include <algorithm>
#include <array>
#include <atomic>
#include <map>
#include <mutex>
#include <set>
#include <unordered_map>

#include "absl/strings/str_cat.h"

namespace magma::engine {
namespace {

// ------------------------------------------------------------ regex -> NFA

struct NfaState {
  std::vector<std::pair<std::array<bool, 256>, int>> edges;  // byte set -> state
  std::vector<int> eps;
};

struct Fragment {
  int start, end;  // end has no outgoing edges yet
};

class RegexParser {
 public:
  explicit RegexParser(const std::string& p) : p_(p) {}

  absl::StatusOr<std::pair<std::vector<NfaState>, Fragment>> Parse() {
    auto f = Alternation();
    if (!f.ok()) return f.status();
    if (pos_ != p_.size()) return Error("unexpected ')'");
    return std::make_pair(std::move(states_), *f);
  }

 private:
  absl::Status Error(const std::string& why) const {
    return absl::InvalidArgumentError(absl::StrCat("grammar pattern, position ", pos_, ": ", why));
  }
  int NewState() {
    states_.emplace_back();
    return static_cast<int>(states_.size()) - 1;
  }
  Fragment Bytes(const std::array<bool, 256>& set) {
    Fragment f{NewState(), NewState()};
    states_[f.start].edges.push_back({set, f.end});
    return f;
  }
  Fragment Empty() {
    Fragment f{NewState(), NewState()};
    states_[f.start].eps.push_back(f.end);
    return f;
  }
  // A copy of the sub-automaton [first, last) built for `f`.
  Fragment Clone(const Fragment& f, int first, int last) {
    const int offset = static_cast<int>(states_.size()) - first;
    for (int s = first; s < last; ++s) {
      NfaState copy = states_[s];
      for (auto& e : copy.edges) e.second += offset;
      for (auto& e : copy.eps) e += offset;
      states_.push_back(std::move(copy));
    }
    return {f.start + offset, f.end + offset};
  }

  absl::StatusOr<Fragment> Alternation() {
    auto first = Sequence();
    if (!first.ok()) return first;
    std::vector<Fragment> alts = {*first};
    while (pos_ < p_.size() && p_[pos_] == '|') {
      ++pos_;
      auto next = Sequence();
      if (!next.ok()) return next;
      alts.push_back(*next);
    }
    if (alts.size() == 1) return alts[0];
    Fragment f{NewState(), NewState()};
    for (const auto& a : alts) {
      states_[f.start].eps.push_back(a.start);
      states_[a.end].eps.push_back(f.end);
    }
    return f;
  }

  absl::StatusOr<Fragment> Sequence() {
    Fragment f = Empty();
    while (pos_ < p_.size() && p_[pos_] != '|' && p_[pos_] != ')') {
      auto item = Repeated();
      if (!item.ok()) return item;
      states_[f.end].eps.push_back(item->start);
      f.end = item->end;
    }
    return f;
  }

  absl::StatusOr<Fragment> Repeated() {
    const int first_state = static_cast<int>(states_.size());
    auto atom = Atom();
    if (!atom.ok()) return atom;
    const int last_state = static_cast<int>(states_.size());
    if (pos_ >= p_.size()) return atom;
    int lo = 1, hi = 1;
    const char q = p_[pos_];
    if (q == '?') {
      lo = 0, hi = 1, ++pos_;
    } else if (q == '*') {
      lo = 0, hi = -1, ++pos_;
    } else if (q == '+') {
      lo = 1, hi = -1, ++pos_;
    } else if (q == '{') {
      size_t close = p_.find('}', pos_);
      if (close == std::string::npos) return Error("unclosed '{'");
      const std::string body = p_.substr(pos_ + 1, close - pos_ - 1);
      const size_t comma = body.find(',');
      try {
        lo = std::stoi(body.substr(0, comma));
        hi = comma == std::string::npos ? lo : (comma + 1 == body.size() ? -1 : std::stoi(body.substr(comma + 1)));
      } catch (...) {
        return Error("bad {m,n} quantifier");
      }
      if (lo < 0 || (hi >= 0 && hi < lo) || lo > 64 || hi > 64) return Error("bad {m,n} quantifier");
      pos_ = close + 1;
    } else {
      return atom;
    }
    // Expand: lo mandatory copies, then (hi - lo) optional ones or a star.
    Fragment result = Empty();
    auto append = [&](const Fragment& piece) {
      states_[result.end].eps.push_back(piece.start);
      result.end = piece.end;
    };
    std::vector<Fragment> copies;
    const int needed = std::max(lo, 1) + (hi > lo ? hi - lo : 0);
    copies.push_back(*atom);
    for (int i = 1; i < needed; ++i) copies.push_back(Clone(*atom, first_state, last_state));
    int used = 0;
    for (; used < lo; ++used) append(copies[used]);
    if (hi < 0) {
      // Star over one more copy (or the atom itself when lo == 0).
      const Fragment& loop = lo == 0 ? copies[0] : Clone(*atom, first_state, last_state);
      Fragment star{NewState(), NewState()};
      states_[star.start].eps.push_back(loop.start);
      states_[star.start].eps.push_back(star.end);
      states_[loop.end].eps.push_back(loop.start);
      states_[loop.end].eps.push_back(star.end);
      append(star);
    } else if (hi > lo) {
      // The optional copies nested, (x(x(x)?)?)?, rather than in a row,
      // x?x?x?: after each copy only the next one and the way out are open,
      // so the automaton's state sets stay small (in a row, each would hold
      // every later copy's start).
      const int end = NewState();
      int next = end;  // where the copy after this one starts
      for (int i = hi - lo - 1; i >= 0; --i) {
        const Fragment& opt = copies[used + i];
        const int maybe = NewState();
        states_[maybe].eps.push_back(opt.start);
        states_[maybe].eps.push_back(end);
        states_[opt.end].eps.push_back(next);
        next = maybe;
      }
      append(Fragment{next, end});
    }
    return result;
  }

  absl::StatusOr<Fragment> Atom() {
    if (pos_ >= p_.size()) return Error("pattern ends early");
    const char c = p_[pos_];
    if (c == '(') {
      ++pos_;
      auto inner = Alternation();
      if (!inner.ok()) return inner;
      if (pos_ >= p_.size() || p_[pos_] != ')') return Error("unclosed '('");
      ++pos_;
      return inner;
    }
    if (c == '[') return Class();
    if (c == '*' || c == '+' || c == '?' || c == '{' || c == ')') return Error(absl::StrCat("unexpected '", std::string(1, c), "'"));
    std::array<bool, 256> set{};
    if (c == '\\') {
      auto s = Escape(&set);
      if (!s.ok()) return s;
    } else {
      set[static_cast<unsigned char>(c)] = true;
      ++pos_;
    }
    return Bytes(set);
  }

  absl::Status Escape(std::array<bool, 256>* set) {
    if (pos_ + 1 >= p_.size()) return Error("dangling '\\'");
    const char e = p_[pos_ + 1];
    pos_ += 2;
    switch (e) {
      case 'd':
        for (char d = '0'; d <= '9'; ++d) (*set)[static_cast<unsigned char>(d)] = true;
        return absl::OkStatus();
      case 'n': (*set)['\n'] = true; return absl::OkStatus();
      case 't': (*set)['\t'] = true; return absl::OkStatus();
      default:
        if (std::string("\\[](){}.*+?|\"-^/,:<> ").find(e) == std::string::npos) {
          pos_ -= 2;
          return Error(absl::StrCat("unknown escape '\\", std::string(1, e), "'"));
        }
        (*set)[static_cast<unsigned char>(e)] = true;
        return absl::OkStatus();
    }
  }

  absl::StatusOr<Fragment> Class() {
    ++pos_;  // '['
    std::array<bool, 256> set{};
    bool negate = false;
    if (pos_ < p_.size() && p_[pos_] == '^') {
      negate = true;
      ++pos_;
    }
    bool any = false;
    while (pos_ < p_.size() && p_[pos_] != ']') {
      unsigned char lo;
      if (p_[pos_] == '\\') {
        std::array<bool, 256> esc{};
        if (auto s = Escape(&esc); !s.ok()) return s;
        for (int b = 0; b < 256; ++b) set[b] = set[b] || esc[b];
        any = true;
        continue;
      }
      lo = static_cast<unsigned char>(p_[pos_++]);
      unsigned char hi = lo;
      if (pos_ + 1 < p_.size() && p_[pos_] == '-' && p_[pos_ + 1] != ']') {
        hi = static_cast<unsigned char>(p_[pos_ + 1]);
        pos_ += 2;
        if (hi < lo) return Error("reversed range in class");
      }
      for (int b = lo; b <= hi; ++b) set[b] = true;
      any = true;
    }
    if (pos_ >= p_.size()) return Error("unclosed '['");
    ++pos_;
    if (!any) return Error("empty class");
    if (negate) {
      for (auto& b : set) b = !b;
    }
    return Bytes(set);
  }

  const std::string& p_;
  size_t pos_ = 0;
  std::vector<NfaState> states_;
};

// ------------------------------------------------------------ DFA

struct Dfa {
  std::vector<std::array<int32_t, 256>> next;  // -1 = dead
  std::vector<bool> accepting;
  int32_t start = 0;
};

absl::StatusOr<Dfa> BuildDfa(const std::vector<NfaState>& nfa, const Fragment& f) {
  auto closure = [&](std::set<int> s) {
    std::vector<int> stack(s.begin(), s.end());
    while (!stack.empty()) {
      const int x = stack.back();
      stack.pop_back();
      for (int e : nfa[x].eps) {
        if (s.insert(e).second) stack.push_back(e);
      }
    }
    return s;
  };
  Dfa dfa;
  std::map<std::set<int>, int32_t> ids;
  std::vector<std::set<int>> sets;
  auto intern = [&](std::set<int> s) -> int32_t {
    auto it = ids.find(s);
    if (it != ids.end()) return it->second;
    const int32_t id = static_cast<int32_t>(sets.size());
    ids.emplace(s, id);
    sets.push_back(std::move(s));
    return id;
  };
  // Bytes that no edge tells apart (all digits, say) form one class: each
  // state's transitions are worked out once per class, not once per byte.
  std::vector<std::vector<int>> classes;  // the bytes of each class
  {
    std::set<std::array<bool, 256>> distinct;
    for (const NfaState& st : nfa) {
      for (const auto& e : st.edges) distinct.insert(e.first);
    }
    std::map<std::vector<bool>, size_t> ids;
    for (int b = 0; b < 256; ++b) {
      std::vector<bool> signature;
      signature.reserve(distinct.size());
      for (const auto& d : distinct) signature.push_back(d[b]);
      const size_t k = ids.emplace(std::move(signature), classes.size()).first->second;
      if (k == classes.size()) classes.emplace_back();
      classes[k].push_back(b);
    }
  }
  dfa.start = intern(closure({f.start}));
  for (size_t i = 0; i < sets.size(); ++i) {
    if (sets.size() > kMaxGrammarStates) {
      return absl::ResourceExhaustedError(absl::StrCat("grammar needs more than ", kMaxGrammarStates, " states"));
    }
    std::array<int32_t, 256> row;
    row.fill(-1);
    std::map<std::set<int>, std::vector<int>> by_target;
    for (const std::vector<int>& members : classes) {
      const int b = members.front();
      std::set<int> target;
      for (int s : sets[i]) {
        for (const auto& [bytes, to] : nfa[s].edges) {
          if (bytes[b]) target.insert(to);
        }
      }
      if (target.empty()) continue;
      std::vector<int>& bytes = by_target[closure(std::move(target))];
      bytes.insert(bytes.end(), members.begin(), members.end());
    }
    for (auto& [target, bytes] : by_target) {
      const int32_t t = intern(target);
      for (int b : bytes) row[b] = t;
    }
    dfa.next.push_back(row);
    dfa.accepting.push_back(sets[i].count(f.end) > 0);
  }
  // States that cannot reach acceptance are dead.
  std::vector<bool> live(dfa.next.size(), false);
  for (size_t i = 0; i < live.size(); ++i) live[i] = dfa.accepting[i];
  for (bool changed = true; changed;) {
    changed = false;
    for (size_t i = 0; i < live.size(); ++i) {
      if (live[i]) continue;
      for (int32_t t : dfa.next[i]) {
        if (t >= 0 && live[t]) {
          live[i] = changed = true;
          break;
        }
      }
    }
  }
  for (auto& row : dfa.next) {
    for (auto& t : row) {
      if (t >= 0 && !live[t]) t = -1;
    }
  }
  return dfa;
}

class DfaGrammar;

class DfaConstraint final : public Constraint {
 public:
  DfaConstraint(const DfaGrammar* g, int32_t state) : g_(g), state_(state) {}
  const std::vector<int32_t>& Allowed() override;
  void Accept(int32_t id) override;
  bool Finished() const override { return finished_; }
  bool Complete() const override;

 private:
  const DfaGrammar* g_;
  int32_t state_;
  bool first_ = true;  // no token accepted yet: tokens stand for their first_bytes
  bool finished_ = false;
};

class DfaGrammar final : public Grammar, public std::enable_shared_from_this<DfaGrammar> {
 public:
  DfaGrammar(Dfa dfa, std::shared_ptr<const TokenTable> table) : dfa_(std::move(dfa)), table_(std::move(table)) {}
  std::unique_ptr<Constraint> Start() const override {
    return std::make_unique<DfaConstraint>(this, dfa_.start);
  }

  // State after `bytes` from `state`, -1 if the grammar rejects them.
  int32_t Run(int32_t state, const std::string& bytes) const {
    for (unsigned char b : bytes) {
      state = dfa_.next[state][b];
      if (state < 0) return -1;
    }
    return state;
  }
  bool Accepting(int32_t state) const { return dfa_.accepting[state]; }
  // The automaton and the allowed-id lists computed so far (they grow as
  // decoding and MinTokens reach new states).
  size_t TableBytes() const override {
    return dfa_.next.size() * sizeof(dfa_.next[0]) + dfa_.accepting.size() / 8 +
           allowed_bytes_.load(std::memory_order_relaxed);
  }
  int32_t Advance(int32_t state, int32_t id, bool first) const {
    return Run(state, first ? table_->first_bytes(id) : table_->bytes(id));
  }
  // A first token that decoding drops entirely (SentencePiece's lone
  // dummy-prefix space, before an answer that starts with "[" or a digit).
  bool Vanishes(int32_t id) const { return table_->first_bytes(id).empty() && !table_->bytes(id).empty(); }
  bool IsEnd(int32_t id) const {
    const auto& e = table_->end_ids();
    return std::find(e.begin(), e.end(), id) != e.end();
  }

  // Breadth first over (state, first token yet) pairs, one level a token;
  // a length once found is kept.
  int32_t MinTokens(int32_t limit) const override {
    const int32_t known = shortest_.load();
    if (known >= 0) return known <= limit ? known : limit + 1;
    const int32_t end = table_->end_ids().empty() ? 0 : 1;
    std::vector<std::pair<int32_t, bool>> level = {{dfa_.start, true}};
    std::set<std::pair<int32_t, bool>> seen(level.begin(), level.end());
    for (int32_t depth = 0; depth + end <= limit && !level.empty(); ++depth) {
      std::vector<std::pair<int32_t, bool>> next;
      for (const auto& [state, first] : level) {
        if (Accepting(state)) {
          shortest_.store(depth + end);
          return depth + end;
        }
        for (int32_t id : AllowedAt(state, first)) {
          if (IsEnd(id)) continue;
          const std::pair<int32_t, bool> to = {first && Vanishes(id) ? state : Advance(state, id, first), false};
          if (seen.insert(to).second) next.push_back(to);
        }
      }
      level = std::move(next);
    }
    return limit + 1;
  }

  // Allowed ids at `state` (as the answer's first token or later),
  // computed once per state.
  // The vocabulary scan runs outside the lock, so that a thread looking up a
  // known state (the engine's) never waits behind another's scan; map
  // references stay valid as entries are added.
  const std::vector<int32_t>& AllowedAt(int32_t state, bool first) const {
    auto& cache = first ? allowed_first_ : allowed_;
    {
      std::lock_guard<std::mutex> lock(mu_);
      auto it = cache.find(state);
      if (it != cache.end()) return it->second;
    }
    std::vector<int32_t> ids;
    for (int32_t id = 0; id < table_->size(); ++id) {
      const std::string& b = first ? table_->first_bytes(id) : table_->bytes(id);
      if ((!b.empty() && Run(state, b) >= 0) || (first && Vanishes(id))) ids.push_back(id);
    }
    if (Accepting(state)) {
      for (int32_t e : table_->end_ids()) ids.push_back(e);
    }
    std::lock_guard<std::mutex> lock(mu_);
    auto [it, added] = cache.emplace(state, std::move(ids));
    if (added) allowed_bytes_.fetch_add(it->second.size() * sizeof(int32_t) + sizeof(ids), std::memory_order_relaxed);
    return it->second;
  }

 private:
  Dfa dfa_;
  std::shared_ptr<const TokenTable> table_;
  mutable std::atomic<int32_t> shortest_{-1};  // MinTokens once found
  mutable std::mutex mu_;
  mutable std::unordered_map<int32_t, std::vector<int32_t>> allowed_;        // guarded by mu_
  mutable std::unordered_map<int32_t, std::vector<int32_t>> allowed_first_;  // guarded by mu_
  mutable std::atomic<size_t> allowed_bytes_{0};                             // of allowed_ and allowed_first_
};

const std::vector<int32_t>& DfaConstraint::Allowed() {
  static const std::vector<int32_t> kNone;
  if (finished_) return kNone;
  return g_->AllowedAt(state_, first_);
}

bool DfaConstraint::Complete() const { return finished_ || g_->Accepting(state_); }

void DfaConstraint::Accept(int32_t id) {
  if (g_->IsEnd(id)) {
    finished_ = true;
    return;
  }
  // A vanishing first token leaves the state; the next token is read with
  // its own bytes (decoding drops one leading space only).
  if (!(first_ && g_->Vanishes(id))) state_ = g_->Advance(state_, id, first_);
  first_ = false;
}

class SequenceConstraint final : public Constraint {
 public:
  SequenceConstraint(const std::vector<int32_t>* ids, int count, const std::vector<int32_t>* end_ids)
      : ids_(ids), remaining_(count), end_ids_(end_ids) {}
  const std::vector<int32_t>& Allowed() override {
    static const std::vector<int32_t> kNone;
    if (finished_) return kNone;
    return remaining_ > 0 ? *ids_ : *end_ids_;
  }
  void Accept(int32_t) override {
    if (remaining_ > 0) {
      --remaining_;
    } else {
      finished_ = true;
    }
  }
  bool Finished() const override { return finished_; }
  bool Complete() const override { return remaining_ == 0; }

 private:
  const std::vector<int32_t>* ids_;
  int remaining_;
  const std::vector<int32_t>* end_ids_;
  bool finished_ = false;
};

class SequenceGrammar final : public Grammar {
 public:
  SequenceGrammar(std::vector<int32_t> ids, int count, std::vector<int32_t> end_ids)
      : ids_(std::move(ids)), count_(count), end_ids_(std::move(end_ids)) {}
  std::unique_ptr<Constraint> Start() const override {
    return std::make_unique<SequenceConstraint>(&ids_, count_, &end_ids_);
  }
  int32_t MinTokens(int32_t limit) const override {
    const int32_t n = count_ + (end_ids_.empty() ? 0 : 1);
    return n <= limit ? n : limit + 1;
  }
  size_t TableBytes() const override { return (ids_.size() + end_ids_.size()) * sizeof(int32_t); }

 private:
  std::vector<int32_t> ids_;
  int count_;
  std::vector<int32_t> end_ids_;
};

}  // namespace

TokenTable::TokenTable(std::vector<std::string> bytes, std::vector<int32_t> end_ids,
                       std::vector<std::string> first_bytes)
    : bytes_(std::move(bytes)), first_bytes_(std::move(first_bytes)), end_ids_(std::move(end_ids)) {
  if (first_bytes_.size() != bytes_.size()) first_bytes_.clear();
}

absl::StatusOr<std::shared_ptr<const Grammar>> CompileRegex(const std::string& pattern,
                                                            std::shared_ptr<const TokenTable> table) {
  RegexParser parser(pattern);
  auto parsed = parser.Parse();
  if (!parsed.ok()) return parsed.status();
  auto dfa = BuildDfa(parsed->first, parsed->second);
  if (!dfa.ok()) return dfa.status();
  return std::shared_ptr<const Grammar>(std::make_shared<DfaGrammar>(*std::move(dfa), std::move(table)));
}

std::string RegexEscape(const std::string& text) {
  std::string out;
  for (char c : text) {
    if (std::string("\\[](){}.*+?|\"^-").find(c) != std::string::npos) out.push_back('\\');
    if (c == '\n') {
      out += "\\n";
      continue;
    }
    if (c == '\t') {
      out += "\\t";
      continue;
    }
    out.push_back(c);
  }
  return out;
}

absl::StatusOr<std::shared_ptr<const Grammar>> CompileChoices(const std::vector<std::string>& choices,
                                                              std::shared_ptr<const TokenTable> table) {
  if (choices.empty()) return absl::InvalidArgumentError("the choice list is empty");
  size_t bytes = 0;
  for (const std::string& c : choices) bytes += c.size();
  if (bytes > kMaxChoiceBytes) {
    return absl::ResourceExhaustedError(
        absl::StrCat("the choices hold ", bytes, " bytes in all; at most ", kMaxChoiceBytes));
  }
  std::string pattern;
  for (size_t i = 0; i < choices.size(); ++i) {
    if (choices[i].empty()) return absl::InvalidArgumentError(absl::StrCat("choice ", i, " is empty"));
    if (i > 0) pattern += "|";
    pattern += "(" + RegexEscape(choices[i]) + ")";
  }
  return CompileRegex(pattern, std::move(table));
}

std::shared_ptr<const Grammar> TokenSequenceGrammar(std::vector<int32_t> ids, int count,
                                                    std::vector<int32_t> end_ids) {
  std::sort(ids.begin(), ids.end());
  return std::make_shared<SequenceGrammar>(std::move(ids), count, std::move(end_ids));
}

}  // namespace magma::engine
