// cpu_lanes: the threaded CPU lanes follow the execution model exactly (under
// the virtual clock their timeline is simulate_order's, every time), run each
// sub-op on its lane's thread and in issue order, hide communication under
// computation in wall time, and fail cleanly: the first failure named, the
// sub-ops after it skipped, the abort callback called once, no hang, and the
// lanes reusable.
#include <catch2/catch.hpp>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdlib>
#include <exception>
#include <new>
#include <stdexcept>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "dualpipe/overlap/cpu_lanes.hpp"
#include "dualpipe/overlap/issue_order.hpp"
#include "dualpipe/overlap/moe_layer.hpp"
#include "dualpipe/overlap/program.hpp"
#include "dualpipe/overlap/timeline.hpp"

// --- allocation counting: operator new counts, on every thread, while on ----

namespace {
std::atomic<bool> counting_allocations{false};
std::atomic<long> allocations{0};
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
void* operator new[](std::size_t n) {
  return operator new(n);
}
void* operator new(std::size_t n, const std::nothrow_t&) noexcept {
  if (counting_allocations) ++allocations;
  return std::malloc(n == 0 ? 1 : n);
}
void* operator new[](std::size_t n, const std::nothrow_t& t) noexcept {
  return operator new(n, t);
}
void operator delete(void* p) noexcept {
  std::free(p);
}
void operator delete[](void* p) noexcept {
  std::free(p);
}
void operator delete(void* p, std::size_t) noexcept {
  std::free(p);
}
void operator delete[](void* p, std::size_t) noexcept {
  std::free(p);
}
void operator delete(void* p, const std::nothrow_t&) noexcept {
  std::free(p);
}
void operator delete[](void* p, const std::nothrow_t&) noexcept {
  std::free(p);
}
#pragma GCC diagnostic pop

namespace {

using dualpipe::overlap::cpu_lanes;
using dualpipe::overlap::issue_order;
using dualpipe::overlap::lane;
using dualpipe::overlap::lane_record;
using dualpipe::overlap::layer_program;
using dualpipe::overlap::make_pair_order;
using dualpipe::overlap::make_pass_order;
using dualpipe::overlap::make_ref;
using dualpipe::overlap::make_sequential_order;
using dualpipe::overlap::moe_layer_costs;
using dualpipe::overlap::moe_layer_programs;
using dualpipe::overlap::pass;
using dualpipe::overlap::pass_part;
using dualpipe::overlap::role;
using dualpipe::overlap::stage_programs;
using dualpipe::overlap::sub_op;
using dualpipe::overlap::sub_op_error;
using dualpipe::overlap::sub_op_ref;
namespace moe_forward = dualpipe::overlap::moe_forward;
namespace moe_backward = dualpipe::overlap::moe_backward;

std::size_t flat(const stage_programs& p, sub_op_ref r) {
  return static_cast<std::size_t>(dualpipe::overlap::flat_index(p, r));
}
dualpipe::overlap::lane lane_of(const stage_programs& p, sub_op_ref r) {
  return dualpipe::overlap::sub_op_of(p, r).where;
}

// Balanced, communication-bound, compute-bound, fractions whose sums round,
// and all zero.
std::vector<moe_layer_costs> cost_sets() {
  return {
      {2, 3, 4, 3, 2, 1, 4, 2}, {1, 5, 1, 5, 1, 0.5, 1, 0.5},
      {6, 1, 8, 1, 5, 3, 7, 4}, {0.1, 0.7, 0.3, 0.9, 0.2, 0.05, 0.6, 0.15},
      {0, 0, 0, 0, 0, 0, 0, 0},
  };
}

// The orders a stage issues: the pair both ways, and each pass or part alone.
std::vector<std::pair<std::string, issue_order>> orders_of(const stage_programs& p) {
  return {{"pair", make_pair_order(p)},
          {"sequential", make_sequential_order(p)},
          {"forward", make_pass_order(p, pass::forward)},
          {"backward input", make_pass_order(p, pass::backward, pass_part::chain_only)},
          {"backward weight", make_pass_order(p, pass::backward, pass_part::leaves_only)}};
}

// Empty when the records are the simulated timeline (as sets: records come in
// finish order); else what differs.
std::string mismatch(const stage_programs& p, std::span<const lane_record> records,
                     std::span<const dualpipe::overlap::timed_sub_op> expected) {
  if (records.size() != expected.size())
    return std::to_string(records.size()) + " records for " + std::to_string(expected.size()) +
           " sub-ops";
  for (const auto& x : expected) {
    const lane_record* found = nullptr;
    for (const lane_record& r : records)
      if (r.op == x.op) found = &r;
    if (found == nullptr) return describe(p, x.op) + " has no record";
    if (found->where != x.where || found->start != x.start || found->end != x.end)
      return describe(p, x.op) + ": recorded [" + std::to_string(found->start) + ", " +
             std::to_string(found->end) + "], simulated [" + std::to_string(x.start) + ", " +
             std::to_string(x.end) + "]";
  }
  return {};
}

}  // namespace

TEST_CASE("under the virtual clock the threaded run's timeline is simulate_order's, every time",
          "[cpu_lanes]") {
  cpu_lanes lanes;
  lanes.record(true);
  lanes.use_virtual_clock();
  const std::thread::id caller = std::this_thread::get_id();
  for (const moe_layer_costs& costs : cost_sets()) {
    for (int layers = 1; layers <= 3; ++layers) {
      const stage_programs p = moe_layer_programs(costs, layers);
      for (const auto& [name, order] : orders_of(p)) {
        CAPTURE(name, layers, costs.attention, costs.dispatch);
        const auto expected = dualpipe::overlap::simulate_order(p, order.view());
        for (int repeat = 0; repeat < 20; ++repeat) {
          lanes.clear_records();
          std::vector<std::thread::id> ran_on(dualpipe::overlap::max_pair_sub_ops);
          lanes.run(p, order.view(),
                    [&](sub_op_ref r) { ran_on[flat(p, r)] = std::this_thread::get_id(); });
          const std::string diff = mismatch(p, lanes.records(), expected.view());
          CAPTURE(repeat, diff);
          REQUIRE(diff.empty());
          // Compute on the calling thread, communication on one other thread.
          for (const sub_op_ref r : order) {
            const std::thread::id on = ran_on[flat(p, r)];
            if (lane_of(p, r) == lane::compute) {
              REQUIRE(on == caller);
            } else {
              REQUIRE(on != caller);
              REQUIRE(on == lanes.communication_thread());
            }
          }
        }
      }
    }
  }
}

TEST_CASE("the virtual clock takes a cost function, as simulate_order does", "[cpu_lanes]") {
  cpu_lanes lanes;
  lanes.record(true);
  const stage_programs p = moe_layer_programs({2, 3, 4, 3, 2, 1, 4, 2}, 3);
  const auto cost_of = [&p](sub_op_ref r) {
    return dualpipe::overlap::sub_op_of(p, r).cost * (1.0 + 0.25 * r.layer) +
           (r.which == pass::backward ? 0.125 : 0.0);
  };
  lanes.use_virtual_clock(cost_of);
  REQUIRE(lanes.clock() == dualpipe::overlap::lane_clock::virtual_time);
  for (const auto& [name, order] : orders_of(p)) {
    CAPTURE(name);
    lanes.clear_records();
    lanes.run(p, order.view(), [](sub_op_ref) {});
    const auto expected = dualpipe::overlap::simulate_order(p, order.view(), cost_of);
    const std::string diff = mismatch(p, lanes.records(), expected.view());
    CAPTURE(diff);
    REQUIRE(diff.empty());
    // The totals of the recorded timeline are the simulated ones.
    const auto measured =
        dualpipe::overlap::totals_of(dualpipe::overlap::to_timeline(lanes.records()));
    REQUIRE(measured.span == expected.totals().span);
    REQUIRE(measured.hidden == expected.totals().hidden);
  }
  lanes.use_steady_clock();
  REQUIRE(lanes.clock() == dualpipe::overlap::lane_clock::steady);
}

TEST_CASE("each lane runs in issue order, and a sub-op starts after its dependencies finished",
          "[cpu_lanes]") {
  cpu_lanes lanes;
  lanes.record(true);
  for (int layers = 1; layers <= 3; ++layers) {
    const stage_programs p = moe_layer_programs({}, layers);
    for (const auto& [name, order] : orders_of(p)) {
      for (int repeat = 0; repeat < 5; ++repeat) {
        CAPTURE(name, layers, repeat);
        lanes.clear_records();
        lanes.set_tag(repeat);
        // A logical clock: each sub-op takes a tick when it begins and one
        // when it ends; a little jitter shuffles the threads' interleaving.
        std::atomic<int> tick{0};
        std::vector<int> begin(dualpipe::overlap::max_pair_sub_ops, -1);
        std::vector<int> end(dualpipe::overlap::max_pair_sub_ops, -1);
        lanes.run(p, order.view(), [&](sub_op_ref r) {
          begin[flat(p, r)] = tick++;
          const auto jitter =
              static_cast<int>((flat(p, r) * 37 + static_cast<std::size_t>(repeat) * 11) % 5);
          std::this_thread::sleep_for(std::chrono::microseconds(50 * jitter));
          end[flat(p, r)] = tick++;
        });
        REQUIRE(lanes.records().size() == order.view().size());
        REQUIRE(dualpipe::overlap::to_timeline(lanes.records(), repeat).size() ==
                lanes.records().size());
        REQUIRE(dualpipe::overlap::to_timeline(lanes.records(), repeat + 1).empty());
        // Per lane, records come in finish order: it must be issue order.
        for (const lane l : {lane::compute, lane::communication}) {
          std::vector<sub_op_ref> issued, finished;
          for (const sub_op_ref r : order)
            if (lane_of(p, r) == l) issued.push_back(r);
          for (const lane_record& x : lanes.records())
            if (x.where == l) finished.push_back(x.op);
          REQUIRE(finished == issued);
          for (std::size_t i = 1; i < issued.size(); ++i)
            REQUIRE(begin[flat(p, issued[i])] > end[flat(p, issued[i - 1])]);
        }
        // Dependencies in the order finished before their dependents began,
        // on the logical clock and on the recorded (steady) times.
        for (const sub_op_ref r : order) {
          const auto d = dependencies_of(p, r);
          for (int k = 0; k < d.count; ++k) {
            if (end[flat(p, d.on[k])] < 0) continue;  // not in this order
            CAPTURE(describe(p, r), describe(p, d.on[k]));
            REQUIRE(begin[flat(p, r)] > end[flat(p, d.on[k])]);
            const lane_record* mine = nullptr;
            const lane_record* theirs = nullptr;
            for (const lane_record& x : lanes.records()) {
              if (x.op == r) mine = &x;
              if (x.op == d.on[k]) theirs = &x;
            }
            REQUIRE((mine != nullptr && theirs != nullptr));
            REQUIRE(mine->start >= theirs->end);
            REQUIRE(mine->tag == repeat);
          }
        }
      }
    }
  }
}

TEST_CASE("after the first run of some programs, runs allocate nothing (recording off)",
          "[cpu_lanes]") {
  cpu_lanes lanes;
  const stage_programs p = moe_layer_programs({}, 3);
  const issue_order pair = make_pair_order(p);
  const issue_order weights = make_pass_order(p, pass::backward, pass_part::leaves_only);
  std::atomic<int> ran{0};  // both lanes count
  const auto count = [&ran](sub_op_ref) { ++ran; };
  lanes.run(p, pair.view(), count);
  allocations = 0;
  counting_allocations = true;
  for (int repeat = 0; repeat < 10; ++repeat) {
    lanes.run(p, pair.view(), count);
    lanes.run(p, weights.view(), count);
  }
  counting_allocations = false;
  REQUIRE(allocations == 0);
  REQUIRE(ran == 11 * pair.size + 10 * weights.size);
}

namespace {

// Communication sleeps and computation spins, 20 ms each; weight gradients
// are free, so that the sequential order has nothing to hide communication
// under (its backward's leaves would otherwise overlap dispatch(B)).
double hidden_fraction_of(cpu_lanes& lanes, const stage_programs& p, const issue_order& order) {
  lanes.clear_records();
  lanes.run(p, order.view(), [&](sub_op_ref r) {
    const auto& op = dualpipe::overlap::sub_op_of(p, r);
    if (op.kind == dualpipe::overlap::role::leaf) return;
    const auto length = std::chrono::milliseconds(20);
    if (op.where == lane::communication) {
      std::this_thread::sleep_for(length);
    } else {
      const auto until = std::chrono::steady_clock::now() + length;
      while (std::chrono::steady_clock::now() < until) {
      }
    }
  });
  const auto timeline = dualpipe::overlap::to_timeline(lanes.records());
  return dualpipe::overlap::totals_of(timeline).hidden_fraction();
}

}  // namespace

TEST_CASE("in wall time the overlapped pair hides communication, the sequential order does not",
          "[wall-clock]") {
  cpu_lanes lanes;
  lanes.record(true);
  const stage_programs p = moe_layer_programs({1, 1, 1, 1, 1, 0, 1, 0}, 2);
  // The model says: all of it hidden, and none.
  REQUIRE(
      dualpipe::overlap::simulate_order(p, make_pair_order(p).view()).totals().hidden_fraction() ==
      1.0);
  REQUIRE(dualpipe::overlap::simulate_order(p, make_sequential_order(p).view()).totals().hidden ==
          0.0);
  // Wide bounds, the best of three: a loaded machine only delays the threads.
  double overlapped = 0.0, sequential = 1.0;
  for (int attempt = 0; attempt < 3; ++attempt) {
    overlapped = std::max(overlapped, hidden_fraction_of(lanes, p, make_pair_order(p)));
    sequential = std::min(sequential, hidden_fraction_of(lanes, p, make_sequential_order(p)));
  }
  CAPTURE(overlapped, sequential);
  REQUIRE(overlapped > 0.3);
  REQUIRE(sequential < 0.2);
}

namespace {

// What a run that fails did: which sub-ops ran, how often the abort
// callback was called and with what, and what run() threw.
struct failed_run {
  std::vector<int> ran = std::vector<int>(dualpipe::overlap::max_pair_sub_ops, 0);
  int aborts = 0;
  std::string abort_why;
  std::exception_ptr error;
};

template <class Fail>
failed_run run_failing(cpu_lanes& lanes, const stage_programs& p, const issue_order& order,
                       Fail&& fail) {
  failed_run out;
  std::atomic<int> aborts{0};
  try {
    lanes.run(
        p, order.view(),
        [&](sub_op_ref r) {
          fail(r);
          out.ran[flat(p, r)] = 1;
        },
        [&](std::string_view why) noexcept {
          if (aborts++ == 0) out.abort_why = std::string(why);
        });
  } catch (...) {
    out.error = std::current_exception();
  }
  out.aborts = aborts.load();
  return out;
}

// Every sub-op in `order` that depends on `failed`, directly or not.
std::vector<sub_op_ref> dependents_of(const stage_programs& p, const issue_order& order,
                                      sub_op_ref failed) {
  std::vector<int> tainted(dualpipe::overlap::max_pair_sub_ops, 0);
  tainted[flat(p, failed)] = 1;
  std::vector<sub_op_ref> out;
  for (const sub_op_ref r : order) {
    const auto d = dependencies_of(p, r);
    for (int k = 0; k < d.count; ++k)
      if (tainted[flat(p, d.on[k])] != 0 && tainted[flat(p, r)] == 0) {
        tainted[flat(p, r)] = 1;
        out.push_back(r);
      }
  }
  return out;
}

// run() threw a sub_op_error naming `r` with `nested` inside.
void require_names(const failed_run& run, const stage_programs& p, sub_op_ref r,
                   const std::string& nested) {
  REQUIRE(run.error);
  try {
    std::rethrow_exception(run.error);
  } catch (const sub_op_error& e) {
    REQUIRE(e.op() == r);
    REQUIRE(e.where() == lane_of(p, r));
    const std::string expected = "dualpipe::overlap: " + describe(p, r) + " failed on the " +
                                 std::string(dualpipe::overlap::lane_name(lane_of(p, r))) +
                                 " lane: " + nested;
    REQUIRE(std::string(e.what()) == expected);
    try {
      std::rethrow_if_nested(e);
      FAIL("no nested exception");
    } catch (const std::runtime_error& inner) {
      REQUIRE(std::string(inner.what()) == nested);
    }
  }
}

void require_reusable(cpu_lanes& lanes, const stage_programs& p, const issue_order& order) {
  const failed_run again = run_failing(lanes, p, order, [](sub_op_ref) {});
  REQUIRE_FALSE(again.error);
  REQUIRE(again.aborts == 0);
  for (const sub_op_ref r : order) REQUIRE(again.ran[flat(p, r)] == 1);
}

}  // namespace

TEST_CASE("a failing sub-op on either lane: named, dependents skipped, one abort, lanes reusable",
          "[cpu_lanes][errors]") {
  cpu_lanes lanes;
  const stage_programs p = moe_layer_programs({}, 2);
  const issue_order pair = make_pair_order(p);
  for (const sub_op_ref failing : {make_ref(pass::forward, 0, moe_forward::mlp),
                                   make_ref(pass::backward, 1, moe_backward::dispatch),
                                   make_ref(pass::backward, 1, moe_backward::combine),
                                   make_ref(pass::forward, 1, moe_forward::combine),
                                   make_ref(pass::backward, 0, moe_backward::attention_weight)}) {
    CAPTURE(describe(p, failing));
    const failed_run run = run_failing(lanes, p, pair, [&](sub_op_ref r) {
      if (r == failing) throw std::runtime_error("boom");
    });
    require_names(run, p, failing, "boom");
    REQUIRE(run.ran[flat(p, failing)] == 0);
    for (const sub_op_ref r : dependents_of(p, pair, failing)) {
      CAPTURE(describe(p, r));
      REQUIRE(run.ran[flat(p, r)] == 0);
    }
    REQUIRE(run.aborts == 1);
    REQUIRE(run.abort_why.find(describe(p, failing) + " failed") != std::string::npos);
    require_reusable(lanes, p, pair);
  }
}

TEST_CASE("a failure wakes a communication sub-op blocked in a collective through the abort",
          "[cpu_lanes][errors]") {
  // combine(B) of the last layer, the first communication sub-op, blocks like
  // an all-to-all whose peers never come, until the abort callback releases
  // it; attn(F) of layer 0 fails while it waits. run() must return, with
  // attn(F)'s failure (the first), not the collective's.
  cpu_lanes lanes;
  const stage_programs p = moe_layer_programs({}, 2);
  const issue_order pair = make_pair_order(p);
  const sub_op_ref blocked = make_ref(pass::backward, 1, moe_backward::combine);
  const sub_op_ref failing = make_ref(pass::forward, 0, moe_forward::attention);
  REQUIRE(pair.view()[0] == blocked);
  for (int repeat = 0; repeat < 10; ++repeat) {
    std::atomic<bool> waiting{false}, aborted{false};
    int aborts = 0;
    std::exception_ptr error;
    try {
      lanes.run(
          p, pair.view(),
          [&](sub_op_ref r) {
            if (r == blocked) {
              waiting = true;
              waiting.notify_all();
              aborted.wait(false);
              throw std::runtime_error("all-to-all aborted");
            }
            if (r == failing) {
              waiting.wait(false);
              throw std::runtime_error("attention failed");
            }
          },
          [&](std::string_view) noexcept {
            ++aborts;
            aborted = true;
            aborted.notify_all();
          });
    } catch (...) {
      error = std::current_exception();
    }
    failed_run run;
    run.error = error;
    require_names(run, p, failing, "attention failed");
    REQUIRE(aborts == 1);
  }
  require_reusable(lanes, p, pair);
}

TEST_CASE("cpu_lanes refuses orders that cannot run, and stays usable", "[cpu_lanes][errors]") {
  cpu_lanes lanes;
  const stage_programs p = moe_layer_programs({}, 2);
  const issue_order pair = make_pair_order(p);
  std::vector<sub_op_ref> reversed(pair.begin(), pair.end());
  std::reverse(reversed.begin(), reversed.end());
  std::vector<sub_op_ref> twice(pair.begin(), pair.end());
  twice.push_back(twice.front());
  const std::vector<sub_op_ref> foreign{make_ref(pass::forward, 2, 0)};
  std::atomic<int> ran{0};
  const auto count = [&](sub_op_ref) { ++ran; };
  REQUIRE_THROWS_WITH(lanes.run(p, reversed, count), Catch::Contains("chain order broken: "));
  REQUIRE_THROWS_WITH(lanes.run(p, twice, count), Catch::Contains(" is issued twice"));
  REQUIRE_THROWS_WITH(lanes.run(p, foreign, count),
                      Catch::Contains("the order names a sub-op the programs do not have"));
  // A leaf that waits for another leaf (after), issued before it: its lane
  // would wait forever.
  stage_programs reduce{};
  reduce.forward = layer_program({sub_op{"attn"}});
  reduce.backward = layer_program({sub_op{"attn"}, sub_op{"attn.W", lane::compute, role::leaf},
                                   sub_op{"reduce.W", lane::communication, role::leaf, 0.0, 1}});
  const std::vector<sub_op_ref> reduce_first{make_ref(pass::backward, 0, 0),
                                             make_ref(pass::backward, 0, 2),
                                             make_ref(pass::backward, 0, 1)};
  REQUIRE_THROWS_WITH(
      lanes.run(reduce, reduce_first, count),
      Catch::Contains("deadlock on first-in-first-out lanes: reduce.W(B) of layer 0 waits for "
                      "attn.W(B) of layer 0"));
  stage_programs broken = p;
  broken.layers = 0;
  REQUIRE_THROWS_AS(lanes.run(broken, pair.view(), count), std::invalid_argument);
  REQUIRE(ran == 0);
  // Parts and passes alone are fine; the empty order is too.
  REQUIRE(dualpipe::overlap::lane_order_problem(
              p, make_pass_order(p, pass::backward, pass_part::leaves_only).view())
              .empty());
  lanes.run(p, std::span<const sub_op_ref>{}, count);
  REQUIRE(ran == 0);
  require_reusable(lanes, p, pair);
}

TEST_CASE("run() from a sub-op, and an exception of any type, fail as named sub-ops",
          "[cpu_lanes][errors]") {
  cpu_lanes lanes;
  const stage_programs p = moe_layer_programs({}, 1);
  const issue_order forward = make_pass_order(p, pass::forward);
  for (const int index : {moe_forward::attention, moe_forward::dispatch}) {
    const sub_op_ref nesting = make_ref(pass::forward, 0, index);
    const failed_run run = run_failing(lanes, p, forward, [&](sub_op_ref r) {
      if (r == nesting) lanes.run(p, forward.view(), [](sub_op_ref) {});
    });
    REQUIRE(run.error);
    REQUIRE(run.aborts == 1);
    try {
      std::rethrow_exception(run.error);
    } catch (const sub_op_error& e) {
      REQUIRE(e.op() == nesting);
      REQUIRE_THROWS_AS(std::rethrow_if_nested(e), std::logic_error);
    }
  }
  const failed_run odd = run_failing(lanes, p, forward, [&](sub_op_ref r) {
    if (r.index == moe_forward::combine) throw 42;
  });
  REQUIRE(odd.error);
  try {
    std::rethrow_exception(odd.error);
  } catch (const sub_op_error& e) {
    REQUIRE_THAT(e.what(), Catch::EndsWith("an exception that is not a std::exception"));
    REQUIRE_THROWS_AS(std::rethrow_if_nested(e), int);
  }
  require_reusable(lanes, p, forward);
}

TEST_CASE("lanes are destroyed cleanly right after a failed run", "[cpu_lanes][errors]") {
  const stage_programs p = moe_layer_programs({}, 3);
  for (int repeat = 0; repeat < 20; ++repeat) {
    cpu_lanes lanes;
    const failed_run run = run_failing(lanes, p, make_pair_order(p), [&](sub_op_ref r) {
      if (r == make_ref(pass::backward, 2, moe_backward::dispatch)) throw std::runtime_error("x");
    });
    REQUIRE(run.error);
  }
}
