// The executor on recording stages: every stage receives exactly the buffer
// the schedule routes to it, compute runs in the table's order (overlapped
// pairs through the hook, or as F then B without it), deferred weight
// gradients run first-in first-out, failures on one rank stop every rank with
// a precise message, and after the first step nothing allocates.
#include <catch2/catch.hpp>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdlib>
#include <exception>
#include <functional>
#include <memory>
#include <new>
#include <stdexcept>
#include <string>
#include <thread>
#include <type_traits>
#include <utility>
#include <vector>

#include "dualpipe/runtime/executor.hpp"
#include "dualpipe/runtime/mirrored.hpp"
#include "dualpipe/schedule/action_syntax.hpp"
#include "dualpipe/schedule/dualpipe.hpp"
#include "dualpipe/schedule/registry.hpp"
#include "dualpipe/transport/in_process.hpp"
#include "rank_threads.hpp"

// --- allocation counting: operator new counts per thread while enabled ------

namespace {
thread_local bool counting_allocations = false;
thread_local long allocations = 0;
}  // namespace

// Replacing the global operator new/delete pair with malloc/free is the
// standard's own mechanism; GCC's inlining heuristics cannot see the pair.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmismatched-new-delete"
void* operator new(std::size_t n) {
  if (counting_allocations) ++allocations;
  if (void* p = std::malloc(n == 0 ? 1 : n)) return p;
  throw std::bad_alloc();
}
void* operator new[](std::size_t n) { return operator new(n); }
void* operator new(std::size_t n, const std::nothrow_t&) noexcept {
  if (counting_allocations) ++allocations;
  return std::malloc(n == 0 ? 1 : n);
}
void* operator new[](std::size_t n, const std::nothrow_t& t) noexcept { return operator new(n, t); }
void operator delete(void* p) noexcept { std::free(p); }
void operator delete[](void* p) noexcept { std::free(p); }
void operator delete(void* p, std::size_t) noexcept { std::free(p); }
void operator delete[](void* p, std::size_t) noexcept { std::free(p); }
void operator delete(void* p, const std::nothrow_t&) noexcept { std::free(p); }
void operator delete[](void* p, const std::nothrow_t&) noexcept { std::free(p); }
#pragma GCC diagnostic pop

namespace {

using dualpipe::instruction;
using dualpipe::op;

// A tensor that says where it comes from: which stage made it, for which
// micro-batch, and whether it is an activation or a gradient. `value` carries
// data through the pipeline (forward adds 1 per stage).
struct token {
  enum kind_t { empty, input, activation, gradient, seed } kind = empty;
  int stage = -1;
  int microbatch = -1;
  double value = 0;
  std::vector<double> payload;  // so that copies and reuse touch the heap
};

struct call {
  char kind;  // F, B, I, W, O (overlapped hook)
  int stage, microbatch, stage_b = -1, microbatch_b = -1;
  friend bool operator==(const call&, const call&) = default;
};

std::string show(const call& c) {
  std::string s(1, c.kind);
  s += " " + std::to_string(c.stage) + " " + std::to_string(c.microbatch);
  if (c.kind == 'O') s += " " + std::to_string(c.stage_b) + " " + std::to_string(c.microbatch_b);
  return s;
}

// Checks what it is given and records what it is asked to do, in the shared
// per-rank log. Throws std::logic_error on a wrong buffer: the executor turns
// that into a failed step, so tests see it.
template <bool Hook>
struct recording_stage {
  int stage = 0;
  int stages = 0;
  std::vector<call>* log = nullptr;
  std::function<void(char, int)> fault;  // called before each call: may throw or stall
  std::size_t payload = 4;

  void expect(const token& t, token::kind_t kind, int from_stage, int mb, const char* what) const {
    if (t.kind != kind || t.stage != from_stage || t.microbatch != mb)
      throw std::logic_error("stage " + std::to_string(stage) + " got a wrong " + what +
                             " for micro-batch " + std::to_string(mb) + ": kind " +
                             std::to_string(t.kind) + " from stage " + std::to_string(t.stage) +
                             " for micro-batch " + std::to_string(t.microbatch));
  }
  void forward(int mb, const token& in, token& out) {
    if (fault) fault('F', mb);
    if (stage == 0) expect(in, token::input, -1, mb, "input");
    else expect(in, token::activation, stage - 1, mb, "input");
    log->push_back({'F', stage, mb});
    out.kind = token::activation;
    out.stage = stage;
    out.microbatch = mb;
    out.value = in.value + 1;
    out.payload.assign(payload, in.value);
  }
  void backward_common(char kind, int mb, const token& grad, token& in_grad) {
    if (fault) fault(kind, mb);
    if (stage == stages - 1) expect(grad, token::seed, stages, mb, "output gradient");
    else expect(grad, token::gradient, stage + 1, mb, "output gradient");
    log->push_back({kind, stage, mb});
    in_grad.kind = token::gradient;
    in_grad.stage = stage;
    in_grad.microbatch = mb;
    in_grad.payload.assign(payload, grad.value);
  }
  void backward(int mb, const token& g, token& ig) { backward_common('B', mb, g, ig); }
  void backward_input(int mb, const token& g, token& ig) { backward_common('I', mb, g, ig); }
  void backward_weight(int mb) {
    if (fault) fault('W', mb);
    log->push_back({'W', stage, mb});
  }
};

template <>
struct recording_stage<true> : recording_stage<false> {
  void overlapped_forward_backward(int f_mb, const token& in, token& out, recording_stage& b,
                                   int b_mb, const token& g, token& ig) {
    const std::size_t before = log->size();
    forward(f_mb, in, out);
    b.backward(b_mb, g, ig);
    // One hook call: replace the two records by one.
    log->resize(before);
    log->push_back({'O', stage, f_mb, b.stage, b_mb});
  }
};

struct token_loss {
  double operator()(const token& y, const token& label) const { return y.value * 1000 + label.value; }
  void gradient(const token& y, const token&, token& g) const {
    g.kind = token::seed;
    g.stage = y.stage + 1;
    g.microbatch = y.microbatch;
    g.value = y.value;
    g.payload.assign(4, y.value);
  }
};

using transport_t = dualpipe::in_process_transport<token>;
template <bool Hook>
using executor_t = dualpipe::executor<recording_stage<Hook>, transport_t, token_loss>;

token input_of(int mb) { return {token::input, -1, mb, 10.0 * mb, {}}; }
token label_of(int mb) { return {token::input, -1, mb, 0.5 * mb, {}}; }

// What one rank did in a run.
struct rank_run {
  std::vector<call> log;
  std::vector<int> leaving;
  std::vector<double> losses, train_losses;
  std::vector<token> outputs;
  std::exception_ptr error;
  long first_step_allocations = -1, second_step_allocations = -1;
  std::size_t pool_before = 0, pool_after = 0;
};

struct run_options {
  int steps = 1;
  dualpipe::step_options step{};
  std::function<void(int rank, int stage, char kind, int mb)> fault;
  std::chrono::milliseconds timeout{10000};
  std::vector<int> absent_ranks;  // ranks that never run (stalled peers)
  bool validate = true;
};

// Runs every rank of `table` on its own thread.
template <bool Hook>
std::vector<rank_run> run_all(dualpipe::table_view table, const run_options& o = {}) {
  const int P = table.ranks();
  dualpipe::in_process_network<token> net(P, o.timeout);
  std::vector<rank_run> runs(static_cast<std::size_t>(P));
  const auto body = [&](int r) {
    rank_run& out = runs[static_cast<std::size_t>(r)];
    try {
      std::vector<std::unique_ptr<recording_stage<Hook>>> stages;
      executor_t<Hook> ex(
          table, net.endpoint(r),
          [&](int s) -> recording_stage<Hook>& {
            auto st = std::make_unique<recording_stage<Hook>>();
            st->stage = s;
            st->stages = table.stages();
            st->log = &out.log;
            if (o.fault) st->fault = [&o, r, s](char k, int mb) { o.fault(r, s, k, mb); };
            stages.push_back(std::move(st));
            return *stages.back();
          },
          dualpipe::executor_options{.validate = o.validate});
      std::vector<token> inputs, labels;
      for (const int m : ex.entering_microbatches()) inputs.push_back(input_of(m));
      for (const int m : ex.leaving_microbatches()) labels.push_back(label_of(m));
      out.leaving.assign(ex.leaving_microbatches().begin(), ex.leaving_microbatches().end());
      token_loss loss;
      out.pool_before = ex.pool_size();
      for (int step = 0; step < o.steps; ++step) {
        if (step > 0) out.log.clear();
        allocations = 0;
        counting_allocations = true;
        const auto& res = ex.step(inputs, labels, loss, o.step);
        counting_allocations = false;
        if (step == 0) out.first_step_allocations = allocations;
        if (step == 1) out.second_step_allocations = allocations;
        out.losses.assign(res.losses.begin(), res.losses.end());
        out.outputs.assign(res.outputs.begin(), res.outputs.end());
      }
      out.pool_after = ex.pool_size();
    } catch (...) {
      counting_allocations = false;
      out.error = std::current_exception();
    }
  };
  {
    std::vector<std::jthread> threads;
    for (int r = 0; r < P; ++r) {
      bool absent = false;
      for (const int a : o.absent_ranks) absent = absent || a == r;
      if (!absent) threads.emplace_back(body, r);
    }
  }
  return runs;
}

// The calls a rank must make, read off its table: F, B, I, W in order; an
// overlapped pair is one hook call, or F then B without the hook.
std::vector<call> expected_calls(dualpipe::table_view table, int rank, bool hook, bool forward_only) {
  std::vector<call> out;
  for (const instruction& x : table.rank(rank)) {
    switch (x.kind) {
      case op::forward: out.push_back({'F', x.stage, x.microbatch}); break;
      case op::backward:
        if (!forward_only) out.push_back({'B', x.stage, x.microbatch});
        break;
      case op::backward_input:
        if (!forward_only) out.push_back({'I', x.stage, x.microbatch});
        break;
      case op::backward_weight:
        if (!forward_only) out.push_back({'W', x.stage, x.microbatch});
        break;
      case op::overlapped_forward_backward:
        if (forward_only) {
          out.push_back({'F', x.stage, x.microbatch});
        } else if (hook) {
          out.push_back({'O', x.stage, x.microbatch, x.stage_b, x.microbatch_b});
        } else {
          out.push_back({'F', x.stage, x.microbatch});
          out.push_back({'B', x.stage_b, x.microbatch_b});
        }
        break;
      default: break;
    }
  }
  return out;
}

void rethrow_any(const std::vector<rank_run>& runs) {
  for (const rank_run& r : runs)
    if (r.error) std::rethrow_exception(r.error);
}

using dualpipe::test::what_of;

// Every table the registry builds at these sizes (skipping sizes a schedule
// rejects), plus DualPipe and DualPipeV.
std::vector<std::pair<std::string, dualpipe::schedule_table>> tables_at(int P, int N) {
  std::vector<std::pair<std::string, dualpipe::schedule_table>> out;
  for (const dualpipe::schedule_entry& e : dualpipe::schedule_registry()) {
    try {
      dualpipe::schedule_request q;
      q.ranks = P;
      q.microbatches = N;
      out.emplace_back(std::string(e.name), dualpipe::make_schedule(e.name, q));
    } catch (const std::invalid_argument&) {
    }
  }
  return out;
}

}  // namespace

TEST_CASE("every rank calls its stages exactly as its table says, on the right buffers",
          "[executor]") {
  // The sizes below 2P and the odd ones run DualPipe's padded tables (and
  // DualPipeV's on one rank); every other schedule that accepts them too.
  for (const auto& [P, N] : std::vector<std::pair<int, int>>{
           {2, 4}, {4, 8}, {4, 10}, {6, 12}, {2, 1}, {4, 3}, {4, 7}, {6, 5}, {1, 1}, {1, 3}}) {
    for (const auto& [name, table] : tables_at(P, N)) {
      CAPTURE(name, P, N);
      const auto runs = run_all<true>(table);
      rethrow_any(runs);
      for (int r = 0; r < P; ++r) {
        CAPTURE(r);
        const auto expected = expected_calls(table, r, true, false);
        const auto& got = runs[static_cast<std::size_t>(r)].log;
        REQUIRE(got.size() == expected.size());
        for (std::size_t i = 0; i < got.size(); ++i) {
          CAPTURE(i, show(expected[i]), show(got[i]));
          REQUIRE(got[i] == expected[i]);
        }
        // Losses: micro-batch m leaves after table.stages() forwards (+1 each).
        const auto& run = runs[static_cast<std::size_t>(r)];
        REQUIRE(run.losses.size() == run.leaving.size());
        for (std::size_t i = 0; i < run.leaving.size(); ++i) {
          const int m = run.leaving[i];
          REQUIRE(run.losses[i] == (10.0 * m + table.info().stages) * 1000 + 0.5 * m);
        }
      }
    }
  }
}

TEST_CASE("a DualPipe rank holds both its stages even when one direction has no micro-batch",
          "[executor]") {
  // N = 1: the one micro-batch enters at rank P-1, so rank r never runs
  // stage r; it holds it all the same, and mirror ranks hold the same stages.
  const auto table = dualpipe::schedules::dualpipe(4, 1);
  dualpipe::in_process_network<token> net(4);
  std::vector<std::unique_ptr<recording_stage<true>>> stages;
  auto stage_of = [&](int s) -> recording_stage<true>& {
    stages.push_back(std::make_unique<recording_stage<true>>());
    stages.back()->stage = s;
    return *stages.back();
  };
  for (int r = 0; r < 4; ++r) {
    CAPTURE(r);
    executor_t<true> ex(table, net.endpoint(r), stage_of);
    const int low = std::min(r, 3 - r), high = std::max(r, 3 - r);
    REQUIRE(std::vector<int>(ex.local_stages().begin(), ex.local_stages().end()) ==
            std::vector<int>{low, high});
  }
}

TEST_CASE("without the hook an overlapped pair runs as forward then backward", "[executor]") {
  const auto table = dualpipe::schedules::dualpipe(4, 12);
  int overlapped = 0;
  for (const instruction& x : table.view().instructions)
    overlapped += x.kind == op::overlapped_forward_backward;
  REQUIRE(overlapped > 0);  // the case is not empty
  STATIC_REQUIRE(executor_t<true>::overlaps_forward_backward);
  STATIC_REQUIRE_FALSE(executor_t<false>::overlaps_forward_backward);
  const auto runs = run_all<false>(table);
  rethrow_any(runs);
  for (int r = 0; r < 4; ++r) {
    const auto expected = expected_calls(table, r, false, false);
    const auto& got = runs[static_cast<std::size_t>(r)].log;
    REQUIRE(got == expected);
    for (const call& c : got) REQUIRE(c.kind != 'O');
  }
}

TEST_CASE("deferred weight gradients run first-in first-out", "[executor]") {
  for (const bool v : {false, true}) {
    const auto table = v ? dualpipe::schedules::dualpipev(4, 10) : dualpipe::schedules::dualpipe(4, 10);
    const auto runs = run_all<true>(table);
    rethrow_any(runs);
    int deferred = 0;
    for (int r = 0; r < 4; ++r) {
      std::vector<std::pair<int, int>> inputs, weights;
      for (const call& c : runs[static_cast<std::size_t>(r)].log) {
        if (c.kind == 'I') inputs.emplace_back(c.stage, c.microbatch);
        if (c.kind == 'W') weights.emplace_back(c.stage, c.microbatch);
      }
      REQUIRE(weights == inputs);
      deferred += static_cast<int>(inputs.size());
    }
    REQUIRE(deferred > 0);
  }
}

TEST_CASE("a W that is not the oldest deferred weight gradient is refused", "[executor]") {
  // DualPipe P=4 N=8: rank 0 defers three weight gradients; swap its first two Ws.
  const auto good = dualpipe::schedules::dualpipe(4, 8);
  dualpipe::schedule_table bad(good.info());
  std::vector<std::size_t> ws;
  for (int r = 0; r < 4; ++r) {
    const auto list = good.rank(r);
    std::vector<instruction> mine(list.begin(), list.end());
    if (r == 0) {
      for (std::size_t i = 0; i < mine.size(); ++i)
        if (mine[i].kind == op::backward_weight) ws.push_back(i);
      REQUIRE(ws.size() >= 2);
      std::swap(mine[ws[0]], mine[ws[1]]);
    }
    for (const instruction& x : mine) bad.push(x);
    bad.end_rank();
  }
  const auto first_w = good.rank(0)[ws[0]];
  const auto second_w = good.rank(0)[ws[1]];

  SECTION("by the validator at construction") {
    dualpipe::in_process_network<token> net(4);
    std::vector<call> log;
    recording_stage<true> st;
    st.log = &log;
    // The swap moves the second W above its own I: the validator names that I.
    const std::string its_i = dualpipe::format_action(
        dualpipe::make_backward_input(second_w.stage, second_w.microbatch));
    REQUIRE_THROWS_WITH(
        (executor_t<true>(bad, net.endpoint(0), [&](int) -> recording_stage<true>& { return st; })),
        Catch::Contains("a W runs before the I that defers its weight gradient; expected " + its_i +
                        " on rank 0 [weight-order]"));
  }
  SECTION("by the executor itself when validation is off") {
    run_options o;
    o.validate = false;
    const auto runs = run_all<true>(bad, o);
    REQUIRE(runs[0].error);
    const std::string what = what_of(runs[0].error);
    CAPTURE(what);
    REQUIRE_THAT(what, Catch::Contains("rank 0") &&
                           Catch::Contains(dualpipe::format_action(second_w)) &&
                           Catch::Contains("first-in first-out") &&
                           Catch::Contains(dualpipe::format_action(
                               dualpipe::make_backward_input(first_w.stage, first_w.microbatch))));
    for (const rank_run& run : runs) REQUIRE(run.error);  // the others are stopped, not left waiting
  }
}

TEST_CASE("forward-only steps run the forwards of the table and return outputs", "[executor]") {
  for (const bool v : {false, true}) {
    const int P = 4, N = 8;
    const auto table = v ? dualpipe::schedules::dualpipev(P, N) : dualpipe::schedules::dualpipe(P, N);
    const auto inference = v ? dualpipe::schedules::dualpipev(P, N, {.forward_only = true})
                             : dualpipe::schedules::dualpipe(P, N, {.forward_only = true});
    run_options o;
    o.step = {.forward_only = true, .return_outputs = true};
    const auto runs = run_all<true>(table, o);
    rethrow_any(runs);
    for (int r = 0; r < P; ++r) {
      const auto& run = runs[static_cast<std::size_t>(r)];
      // The projection the executor runs is the generator's own inference table.
      REQUIRE(run.log == expected_calls(inference, r, true, true));
      REQUIRE(run.outputs.size() == run.leaving.size());
      for (std::size_t i = 0; i < run.leaving.size(); ++i) {
        const int m = run.leaving[i];
        REQUIRE(run.outputs[i].kind == token::activation);
        REQUIRE(run.outputs[i].microbatch == m);
        REQUIRE(run.outputs[i].stage == table.info().stages - 1);
        REQUIRE(run.outputs[i].value == 10.0 * m + table.info().stages);
        REQUIRE(run.losses[i] == (10.0 * m + table.info().stages) * 1000 + 0.5 * m);
      }
    }
    // And a forward-only table runs as given.
    const auto runs2 = run_all<true>(inference, o);
    rethrow_any(runs2);
    for (int r = 0; r < P; ++r)
      REQUIRE(runs2[static_cast<std::size_t>(r)].log == expected_calls(inference, r, true, true));
  }
}

TEST_CASE("the executor's forward-only program is the generator's inference table", "[executor]") {
  for (const auto& [P, N] : std::vector<std::pair<int, int>>{{2, 4}, {4, 8}, {8, 20}})
    for (const bool v : {false, true}) {
      const auto train = v ? dualpipe::schedules::dualpipev(P, N) : dualpipe::schedules::dualpipe(P, N);
      const auto infer = v ? dualpipe::schedules::dualpipev(P, N, {.forward_only = true})
                           : dualpipe::schedules::dualpipe(P, N, {.forward_only = true});
      dualpipe::in_process_network<token> net(P);
      for (int r = 0; r < P; ++r) {
        std::vector<call> log;
        std::vector<recording_stage<true>> st(2);
        int used = 0;
        executor_t<true> ex(train, net.endpoint(r), [&](int) -> recording_stage<true>& {
          return st[static_cast<std::size_t>(used++)];
        });
        const auto got = ex.program(true);
        const auto want = infer.rank(r);
        REQUIRE(std::vector<instruction>(got.begin(), got.end()) ==
                std::vector<instruction>(want.begin(), want.end()));
      }
    }
}

TEST_CASE("training steps can also return outputs", "[executor]") {
  run_options o;
  o.step.return_outputs = true;
  o.steps = 2;
  const auto table = dualpipe::schedules::dualpipe(2, 6);
  const auto runs = run_all<true>(table, o);
  rethrow_any(runs);
  for (const rank_run& run : runs) {
    REQUIRE(run.outputs.size() == 3);
    for (std::size_t i = 0; i < run.leaving.size(); ++i)
      REQUIRE(run.outputs[i].value == 10.0 * run.leaving[i] + 2);
  }
}

TEST_CASE("a stage that throws makes step() throw on every rank", "[executor][errors]") {
  const auto table = dualpipe::schedules::dualpipe(4, 8);
  struct where {
    int rank, stage;
    char kind;
    int mb;
  };
  // A forward in the middle of the step, and the very last weight gradient of
  // a rank (when the others may be done).
  const instruction last_w = [&] {
    instruction w{};
    for (const instruction& x : table.rank(3))
      if (x.kind == op::backward_weight) w = x;
    return w;
  }();
  for (const where f : {where{2, 2, 'F', 1}, where{1, 2, 'B', 5}, where{3, last_w.stage, 'W', last_w.microbatch}}) {
    CAPTURE(f.rank, f.stage, f.kind, f.mb);
    run_options o;
    o.fault = [f](int r, int s, char k, int mb) {
      const bool kind = k == f.kind || (f.kind == 'B' && k == 'I');  // B: either backward
      if (r == f.rank && s == f.stage && kind && mb == f.mb)
        throw std::runtime_error("boom in the user's stage");
    };
    const auto runs = run_all<true>(table, o);
    for (int r = 0; r < 4; ++r) {
      CAPTURE(r);
      const rank_run& run = runs[static_cast<std::size_t>(r)];
      REQUIRE(run.error);
      const std::string what = what_of(run.error);
      CAPTURE(what);
      REQUIRE_THAT(what, Catch::Contains("rank " + std::to_string(f.rank)) &&
                             Catch::Contains("boom in the user's stage"));
      if (r == f.rank) {
        REQUIRE_THROWS_AS(std::rethrow_exception(run.error), dualpipe::stage_error);
        // The original is nested inside.
        try {
          std::rethrow_exception(run.error);
        } catch (const dualpipe::stage_error& e) {
          REQUIRE(e.rank() == f.rank);
          REQUIRE_THROWS_WITH(std::rethrow_if_nested(e), "boom in the user's stage");
        }
      } else {
        try {
          std::rethrow_exception(run.error);
        } catch (const dualpipe::pipeline_aborted& e) {
          REQUIRE(e.origin_rank() == f.rank);
          REQUIRE(e.rank() == r);
          REQUIRE_THAT(e.origin_what(), Catch::Contains("boom in the user's stage"));
        }
      }
    }
  }
}

TEST_CASE("a stalled peer makes a rank time out naming the instruction it waits on",
          "[executor][errors]") {
  // DualPipe P=2 N=4, rank 0 (derived by hand from the reference's steps):
  // F0 of stage 0, then one batch {0SEND_F0 to rank 1, 1RECV_F2 from rank 1}
  // before stage 1's forward of micro-batch 2. Rank 1 never runs.
  const auto table = dualpipe::schedules::dualpipe(2, 4);
  run_options o;
  o.timeout = std::chrono::milliseconds(100);
  o.absent_ranks = {1};
  const auto runs = run_all<true>(table, o);
  REQUIRE(runs[0].error);
  REQUIRE_THROWS_AS(std::rethrow_exception(runs[0].error), dualpipe::transport_timeout);
  const std::string what = what_of(runs[0].error);
  CAPTURE(what);
  REQUIRE_THAT(what, Catch::Contains("rank 0") && Catch::Contains("1RECV_F2 from rank 1") &&
                         Catch::Contains("100 ms"));
  REQUIRE(runs[0].log.size() == 1);  // only F0 ran
}

TEST_CASE("bad tables and missing step arguments are errors that say what is wrong",
          "[executor][errors]") {
  const auto table = dualpipe::schedules::dualpipe(4, 8);
  std::vector<call> log;
  std::vector<recording_stage<true>> st(2);
  for (auto& s : st) s.log = &log;
  int used = 0;
  const auto stage_of = [&](int) -> recording_stage<true>& { return st[static_cast<std::size_t>(used++ % 2)]; };

  SECTION("a table for another number of ranks") {
    dualpipe::in_process_network<token> net(2);
    REQUIRE_THROWS_WITH((executor_t<true>(table, net.endpoint(0), stage_of)),
                        Catch::Contains("the table is for 4 ranks but the transport connects 2"));
    REQUIRE(net.aborted());  // the other ranks are told
  }
  SECTION("a missing input on a first stage") {
    dualpipe::in_process_network<token> net(4);
    executor_t<true> ex(table, net.endpoint(0), stage_of);
    token_loss loss;
    std::vector<token> labels(4);
    REQUIRE_THROWS_WITH(ex.step({}, labels, loss),
                        Catch::Contains("rank 0 runs the first stage (stage 0) of micro-batches "
                                        "0..3 (4 of them) and needs one input each, but step() "
                                        "was given 0"));
    REQUIRE(net.aborted());
  }
  SECTION("a missing label on a last stage") {
    dualpipe::in_process_network<token> net(4);
    executor_t<true> ex(table, net.endpoint(3), stage_of);
    token_loss loss;
    std::vector<token> inputs(4);
    REQUIRE_THROWS_WITH(ex.step(inputs, std::vector<token>(1), loss),
                        Catch::Contains("rank 3 runs the last stage (stage 3) of micro-batches "
                                        "0..3 (4 of them) and needs one label each") &&
                            Catch::Contains("given 1"));
  }
  SECTION("a missing loss on a last stage") {
    dualpipe::in_process_network<token> net(4);
    executor_t<true> ex(table, net.endpoint(0), stage_of);
    std::vector<token> inputs(4);
    REQUIRE_THROWS_WITH(ex.step(inputs),
                        Catch::Contains("rank 0 runs the last stage (stage 3) of micro-batches "
                                        "4..7: a training step needs a loss function there"));
  }
  SECTION("a rank without a last stage trains without a loss") {
    dualpipe::in_process_network<token> net(4);
    executor_t<true> ex(table, net.endpoint(1), stage_of);
    REQUIRE(ex.leaving_microbatches().empty());
    REQUIRE(ex.entering_microbatches().empty());
    REQUIRE(ex.local_stages().size() == 2);
    REQUIRE(ex.local_stages()[0] == 1);
    REQUIRE(ex.local_stages()[1] == 2);
  }
  SECTION("a training step on an inference table") {
    dualpipe::in_process_network<token> net(4);
    const auto infer = dualpipe::schedules::dualpipe(4, 8, {.forward_only = true});
    executor_t<true> ex(infer, net.endpoint(1), stage_of);
    REQUIRE_THROWS_WITH(ex.step({}), Catch::Contains("the table is forward-only"));
  }
  SECTION("an invalid table") {
    dualpipe::in_process_network<token> net(4);
    dualpipe::schedule_table broken(table.info());
    for (int r = 0; r < 4; ++r) {
      const auto list = table.rank(r);
      // Rank 2 forgets its last instruction.
      for (std::size_t i = 0; i + (r == 2 ? 1 : 0) < list.size(); ++i) broken.push(list[i]);
      broken.end_rank();
    }
    REQUIRE_THROWS_WITH((executor_t<true>(broken, net.endpoint(0), stage_of)),
                        Catch::Contains("dualpipe::executor: invalid schedule"));
  }
}

TEST_CASE("after the first step a step allocates nothing and the pool does not grow",
          "[executor]") {
  for (const bool v : {false, true}) {
    const auto table = v ? dualpipe::schedules::dualpipev(4, 8) : dualpipe::schedules::dualpipe(4, 8);
    run_options o;
    o.steps = 3;
    const auto runs = run_all<true>(table, o);
    rethrow_any(runs);
    for (const rank_run& run : runs) {
      REQUIRE(run.first_step_allocations > 0);  // the counter sees the warm-up
      REQUIRE(run.second_step_allocations == 0);
      REQUIRE(run.pool_after == run.pool_before);
      REQUIRE(run.pool_before > 0);
    }
  }
}

TEST_CASE("split_inputs, split_labels and gather_outputs", "[executor]") {
  // DualPipeV: rank 0 feeds and finishes all micro-batches.
  const int P = 2, N = 4;
  const auto table = dualpipe::schedules::dualpipev(P, N);
  dualpipe::in_process_network<token> net(P);
  std::vector<double> gathered;
  const auto body = [&](int r) {
    std::vector<call> log;
    std::vector<recording_stage<true>> st(2);
    int used = 0;
    executor_t<true> ex(table, net.endpoint(r), [&](int s) -> recording_stage<true>& {
      auto& x = st[static_cast<std::size_t>(used++)];
      x.stage = s;
      x.stages = 2 * P;
      x.log = &log;
      return x;
    });
    const std::vector<double> batch{1, 2, 3, 4};  // one value per micro-batch
    const auto split = [](const std::vector<double>& b, int part, int parts, token& out) {
      if (parts != 4) throw std::logic_error("split into " + std::to_string(parts) + " parts");
      out = {token::input, -1, part, b[static_cast<std::size_t>(part)], {}};
    };
    const auto split_label = [](const std::vector<double>&, int part, int, token& out) {
      out = {token::input, -1, part, 0, {}};
    };
    token_loss loss;
    if (r == 0) {
      const auto inputs = ex.split_inputs(batch, split);
      const auto labels = ex.split_labels(batch, split_label);
      ex.step(inputs, labels, loss, {.return_outputs = true});
      ex.gather_outputs(gathered, [](std::span<const token> outs, std::vector<double>& whole) {
        for (const token& t : outs) whole.push_back(t.value);
      });
    } else {
      ex.step({}, {}, loss, {.return_outputs = true});
    }
  };
  dualpipe::test::rethrow_any(dualpipe::test::on_ranks(P, body));
  REQUIRE(gathered == std::vector<double>{1 + 2 * P, 2 + 2 * P, 3 + 2 * P, 4 + 2 * P});
}

// --- a stream-ordered transport: commit returns a ticket -------------------

namespace {

// Wraps the in-process transport and pretends each batch finishes only after
// a few polls; at completion it checks that the executor left every sent
// buffer untouched since it was posted.
struct ticket_transport {
  using tensor_type = token;
  struct ticket {
    std::size_t batch;
  };
  transport_t* inner;
  struct batch {
    std::vector<std::pair<const token*, token>> sent;
    int polls_left = 3;
    bool done = false;
  };
  std::vector<batch> batches{};
  batch current{};
  int touched = 0;
  int completed = 0;

  int rank() const { return inner->rank(); }
  int ranks() const { return inner->ranks(); }
  void post_send(const instruction& i, const token& t) {
    inner->post_send(i, t);
    current.sent.emplace_back(&t, t);
  }
  void post_recv(const instruction& i, token& t) { inner->post_recv(i, t); }
  ticket commit() {
    inner->commit();
    batches.push_back(std::move(current));
    current = {};
    return {batches.size() - 1};
  }
  void finish(batch& b) {
    if (b.done) return;
    for (const auto& [where, copy] : b.sent)
      if (where->kind != copy.kind || where->stage != copy.stage ||
          where->microbatch != copy.microbatch || where->payload != copy.payload)
        ++touched;
    b.done = true;
    ++completed;
  }
  bool complete(const ticket& t) {
    batch& b = batches[t.batch];
    if (b.polls_left-- > 0) return false;
    finish(b);
    return true;
  }
  void wait(const ticket& t) { finish(batches[t.batch]); }
  void abort(std::string_view why) noexcept { inner->abort(why); }
  void finish_step() { inner->finish_step(); }
};

}  // namespace

TEST_CASE("with a deferred-completion transport sent buffers stay untouched until complete",
          "[executor]") {
  STATIC_REQUIRE(dualpipe::transport_with_deferred_completion<ticket_transport>);
  const int P = 4, N = 8;
  const auto table = dualpipe::schedules::dualpipe(P, N);
  dualpipe::in_process_network<token> net(P);
  std::vector<int> touched(P, -1), completed(P, 0), batches(P, 0);
  const auto body = [&](int r) {
    ticket_transport tt{&net.endpoint(r)};
    {
      std::vector<call> log;
      std::vector<recording_stage<true>> st(2);
      int used = 0;
      dualpipe::executor<recording_stage<true>, ticket_transport, token_loss> ex(
          table, tt, [&](int s) -> recording_stage<true>& {
            auto& x = st[static_cast<std::size_t>(used++)];
            x.stage = s;
            x.stages = P;
            x.log = &log;
            return x;
          });
      std::vector<token> inputs, labels;
      for (const int m : ex.entering_microbatches()) inputs.push_back(input_of(m));
      for (const int m : ex.leaving_microbatches()) labels.push_back(label_of(m));
      token_loss loss;
      for (int step = 0; step < 3; ++step) ex.step(inputs, labels, loss);
    }  // the destructor waits for the batches still in flight
    touched[static_cast<std::size_t>(r)] = tt.touched;
    completed[static_cast<std::size_t>(r)] = tt.completed;
    batches[static_cast<std::size_t>(r)] = static_cast<int>(tt.batches.size());
  };
  dualpipe::test::rethrow_any(dualpipe::test::on_ranks(P, body));
  for (int r = 0; r < P; ++r) {
    REQUIRE(batches[static_cast<std::size_t>(r)] > 0);
    REQUIRE(completed[static_cast<std::size_t>(r)] == batches[static_cast<std::size_t>(r)]);
    REQUIRE(touched[static_cast<std::size_t>(r)] == 0);
  }
}

TEST_CASE("a compute-only table is lowered and runs in its compute order", "[executor]") {
  for (const bool v : {false, true}) {
    const auto table = v ? dualpipe::schedules::dualpipev(4, 8, {.with_communication = false})
                         : dualpipe::schedules::dualpipe(4, 8, {.with_communication = false});
    for (const instruction& x : table.view().instructions) REQUIRE(dualpipe::is_compute(x.kind));
    const auto runs = run_all<true>(table);
    rethrow_any(runs);
    for (int r = 0; r < 4; ++r)
      REQUIRE(runs[static_cast<std::size_t>(r)].log == expected_calls(table, r, true, false));
  }
}

// --- the loss value type is the user's --------------------------------------

namespace {

// Double data through an affine stage per model stage, with weights whose
// products need all 53 bits: any rounding to float on the way would show.
using vector_t = std::vector<double>;

double stage_weight(int s) { return 1.0 + (s + 1) * 1e-12; }
double stage_bias(int s) { return 0.1 * (s + 1); }

void affine(int s, const vector_t& in, vector_t& out) {
  out.resize(in.size());
  for (std::size_t i = 0; i < in.size(); ++i) out[i] = in[i] * stage_weight(s) + stage_bias(s);
}

struct affine_stage {
  int stage = 0;
  void forward(int, const vector_t& in, vector_t& out) { affine(stage, in, out); }
  void backward(int, const vector_t& g, vector_t& ig) {
    ig.resize(g.size());
    for (std::size_t i = 0; i < g.size(); ++i) ig[i] = g[i] * stage_weight(stage);
  }
  void backward_input(int mb, const vector_t& g, vector_t& ig) { backward(mb, g, ig); }
  void backward_weight(int) {}
};

// The loss returns the data's own element type, as docs/executor.md says.
template <class Value>
struct squared_error {
  Value operator()(const vector_t& y, const vector_t& label) const {
    double sum = 0;
    for (std::size_t i = 0; i < y.size(); ++i) sum += (y[i] - label[i]) * (y[i] - label[i]);
    return static_cast<Value>(sum);
  }
  void gradient(const vector_t& y, const vector_t& label, vector_t& seed) const {
    seed.resize(y.size());
    for (std::size_t i = 0; i < y.size(); ++i) seed[i] = 2 * (y[i] - label[i]);
  }
};

vector_t affine_input(int mb) { return {1.0 / 3 + mb, 2.0 / 7 - mb, 1e-9 * mb}; }
vector_t affine_label(int mb) { return {0.5 * mb, 1.0 / 11, -1.0 / 13}; }

// The loss of micro-batch m computed without a pipeline.
double unpipelined_loss(int stages, int m) {
  vector_t x = affine_input(m), y;
  for (int s = 0; s < stages; ++s) {
    affine(s, x, y);
    std::swap(x, y);
  }
  return squared_error<double>{}(x, affine_label(m));
}

// Every rank's losses, in leaving_microbatches() order, and those micro-batches.
template <class Value>
std::vector<std::pair<std::vector<int>, std::vector<Value>>> pipelined_losses(
    dualpipe::table_view table) {
  using transport = dualpipe::in_process_transport<vector_t>;
  using executor = dualpipe::executor<affine_stage, transport, squared_error<Value>>;
  STATIC_REQUIRE(std::is_same_v<typename executor::loss_value_type, Value>);
  using step_losses = decltype(std::declval<typename executor::step_result>().losses);
  STATIC_REQUIRE(std::is_same_v<typename step_losses::value_type, Value>);
  const int P = table.ranks();
  dualpipe::in_process_network<vector_t> net(P);
  std::vector<std::pair<std::vector<int>, std::vector<Value>>> out(static_cast<std::size_t>(P));
  const auto body = [&](int r) {
    std::vector<affine_stage> stages;
    stages.reserve(static_cast<std::size_t>(table.stages()));  // no reallocation: stable references
    executor ex(table, net.endpoint(r),
                [&](int s) -> affine_stage& { return stages.emplace_back(affine_stage{s}); });
    std::vector<vector_t> inputs, labels;
    for (const int m : ex.entering_microbatches()) inputs.push_back(affine_input(m));
    for (const int m : ex.leaving_microbatches()) labels.push_back(affine_label(m));
    squared_error<Value> loss;
    const auto& res = ex.step(inputs, labels, loss);
    auto& [mbs, losses] = out[static_cast<std::size_t>(r)];
    mbs.assign(res.microbatches.begin(), res.microbatches.end());
    losses.assign(res.losses.begin(), res.losses.end());
  };
  dualpipe::test::rethrow_any(dualpipe::test::on_ranks(P, body));
  return out;
}

}  // namespace

TEST_CASE("a loss returning double on double data keeps every loss bit for bit", "[executor]") {
  for (const bool v : {false, true}) {
    const auto table =
        v ? dualpipe::schedules::dualpipev(2, 4) : dualpipe::schedules::dualpipe(4, 8);
    INFO(table.info().kind.name);
    const int S = table.info().stages;
    int seen = 0;
    for (const auto& [mbs, losses] : pipelined_losses<double>(table)) {
      REQUIRE(losses.size() == mbs.size());
      for (std::size_t i = 0; i < mbs.size(); ++i) {
        CAPTURE(mbs[i]);
        REQUIRE(losses[i] == unpipelined_loss(S, mbs[i]));
        ++seen;
      }
    }
    REQUIRE(seen == table.info().microbatches);
    // The docs' old example returned float: on the same data that rounds.
    int rounded = 0;
    for (const auto& [mbs, losses] : pipelined_losses<float>(table))
      for (std::size_t i = 0; i < mbs.size(); ++i)
        rounded += static_cast<double>(losses[i]) != unpipelined_loss(S, mbs[i]);
    REQUIRE(rounded > 0);
  }
}

// docs/executor.md's `mirror_rank(table.info(), r)` reads the same on a table
// built at run time and on one built at compile time.
static_assert(dualpipe::mirror_rank(dualpipe::schedules::dualpipe_table<4, 8>().info(), 0) == 3);
TEST_CASE("mirror_rank(table.info(), r) as the docs write it", "[executor]") {
  REQUIRE(dualpipe::mirror_rank(dualpipe::schedules::dualpipe(4, 8).info(), 1) == 2);
  REQUIRE(dualpipe::mirror_rank(dualpipe::schedules::dualpipev(2, 4).info(), 1) == -1);
}
