// One run of the moe-overlap example on P x E threads (world.hpp): every
// thread builds its rank (its stages, lanes and executor), then
//
//   1. a checked training step and inference step with overlapped pairs, then
//      the same with sequential pairs (forward, then backward, on the same
//      lanes); rank 0 compares them with each other and with the
//      un-pipelined model (reference.hpp), bit for bit, and prints the
//      verdict;
//   2. with --steps K, K timed training steps in each mode, the overlapped
//      ones with the lanes recording every sub-op, and a JSON summary
//      (pair_stats.hpp) as the last line.
//
// A failure on any thread ends every thread (world::abort) and the run
// exits 1, each thread naming what stopped it.
#pragma once

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <exception>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "dualpipe/runtime/executor.hpp"
#include "dualpipe/runtime/mirrored.hpp"
#include "dualpipe/schedule/table.hpp"
#include "moe_stage.hpp"
#include "options.hpp"
#include "pair_stats.hpp"
#include "pipeline.hpp"
#include "reference.hpp"
#include "step_times.hpp"
#include "thread_group.hpp"
#include "world.hpp"

namespace moe_overlap {

// One thread's share of a checked step, read by rank 0 after a barrier.
template <class Real>
struct rank_record {
  std::vector<int> leaving;  // micro-batches whose last stage ran here
  std::vector<Real> train_losses, infer_losses;
  std::vector<tensor<Real>> infer_outputs;
  std::vector<int> stages;                                    // held here
  std::vector<std::vector<layer_gradients<Real>>> gradients;  // [held stage][layer]
  int pairs = 0;                                              // in the training step
};

// One thread: pipeline rank p of replica e.
template <class Real, int Layers>
class moe_rank {
 public:
  using stage_type = moe_stage<Real, Layers>;
  using transport_type = dualpipe::in_process_transport<tensor<Real>>;
  using executor_type = dualpipe::executor<stage_type, transport_type, train_mlp::mse_loss<Real>>;

  moe_rank(dualpipe::table_view table, world<Real>& w, int p, int e, const model<Real>& m,
           const batch<Real>& data)
      : executor_(table, w.network(e).endpoint(p), [&](int s) -> stage_type& {
          return *stages_.emplace_back(
              std::make_unique<stage_type>(m, s, e, table.microbatches(), w.exchange(p), context_));
        }) {
    const auto ue = static_cast<std::size_t>(e);
    train_mlp::take_share(executor_, data.inputs[ue], data.labels[ue], inputs_, labels_);
  }

  [[nodiscard]] rank_context& context() noexcept { return context_; }
  [[nodiscard]] executor_type& executor() noexcept { return executor_; }
  [[nodiscard]] stage_type& stage(int s) {
    for (const auto& st : stages_)
      if (st->stage() == s) return *st;
    throw std::logic_error("moe_rank: holds no stage " + std::to_string(s));
  }

  void set_mode(ov::pair_mode m) {
    for (const auto& st : stages_) st->set_pair_mode(m);
  }
  void keep_gradients_per_microbatch(bool on) {
    for (const auto& st : stages_) st->keep_gradients_per_microbatch(on);
  }

  // A training step (timed steps run this).
  void train() { executor_.step(inputs_, labels_, loss_); }

  // The checked step's training half: losses, and the pairs it ran.
  void train_checked(rank_record<Real>& out) {
    const int pairs_before = context_.pairs;
    const auto& r = executor_.step(inputs_, labels_, loss_);
    out.leaving.assign(r.microbatches.begin(), r.microbatches.end());
    out.train_losses.assign(r.losses.begin(), r.losses.end());
    out.pairs = context_.pairs - pairs_before;
  }
  // Its inference half and the gradients (after the mirrored sum).
  void infer_checked(rank_record<Real>& out) {
    const auto& r =
        executor_.step(inputs_, labels_, loss_, {.forward_only = true, .return_outputs = true});
    out.infer_losses.assign(r.losses.begin(), r.losses.end());
    out.infer_outputs.assign(r.outputs.begin(), r.outputs.end());
    out.stages.clear();
    out.gradients.clear();
    for (const int s : executor_.local_stages()) {
      out.stages.push_back(s);
      std::vector<layer_gradients<Real>>& g = out.gradients.emplace_back();
      for (int l = 0; l < Layers; ++l) g.push_back(stage(s).gradients(l));
    }
  }

 private:
  rank_context context_;  // first: the stages refer to it, and its lanes outlive them
  std::vector<std::unique_ptr<stage_type>> stages_;
  executor_type executor_;
  std::vector<tensor<Real>> inputs_, labels_;
  train_mlp::mse_loss<Real> loss_;
};

// Every thread's record merged into one, as the un-pipelined model gives it.
template <class Real>
[[nodiscard]] step_record<Real> merge_records(const std::vector<rank_record<Real>>& records,
                                              const model_shape& shape, int microbatches) {
  const int P = static_cast<int>(records.size()) / shape.members;
  const auto E = static_cast<std::size_t>(shape.members);
  const auto N = static_cast<std::size_t>(microbatches);
  step_record<Real> out;
  out.train_losses.assign(E, std::vector<Real>(N));
  out.infer_losses = out.train_losses;
  out.infer_outputs.assign(E, std::vector<tensor<Real>>(N));
  // [replica][stage]: the first copy seen of each stage's gradients.
  std::vector<std::vector<const std::vector<layer_gradients<Real>>*>> copies(
      E, std::vector<const std::vector<layer_gradients<Real>>*>(
             static_cast<std::size_t>(shape.stages), nullptr));
  for (std::size_t w = 0; w < records.size(); ++w) {
    const rank_record<Real>& r = records[w];
    const std::size_t e = w / static_cast<std::size_t>(P);
    out.overlapped_pairs += r.pairs;
    for (std::size_t i = 0; i < r.leaving.size(); ++i) {
      const auto m = static_cast<std::size_t>(r.leaving[i]);
      out.train_losses[e].at(m) = r.train_losses.at(i);
      out.infer_losses[e].at(m) = r.infer_losses.at(i);
      out.infer_outputs[e].at(m) = r.infer_outputs.at(i);
    }
    for (std::size_t k = 0; k < r.stages.size(); ++k) {
      const auto*& first = copies[e].at(static_cast<std::size_t>(r.stages[k]));
      if (first == nullptr) {
        first = &r.gradients[k];
        continue;
      }
      for (std::size_t l = 0; l < first->size(); ++l) {
        const layer_gradients<Real>& a = (*first)[l];
        const layer_gradients<Real>& b = r.gradients[k][l];
        out.copies_identical =
            out.copies_identical && same_bits(a.attn, b.attn) && same_bits(a.expert, b.expert);
      }
    }
  }
  const auto G = static_cast<std::size_t>(shape.global_layers());
  out.grad_attn.resize(G);
  out.grad_expert.assign(G, std::vector<block_weights<Real>>(E));
  for (std::size_t e = 0; e < E; ++e)
    for (std::size_t s = 0; s < static_cast<std::size_t>(shape.stages); ++s) {
      if (copies[e][s] == nullptr)
        throw std::logic_error("merge_records: no thread of replica " + std::to_string(e) +
                               " held stage " + std::to_string(s));
      for (std::size_t l = 0; l < static_cast<std::size_t>(shape.layers); ++l) {
        const std::size_t g = s * static_cast<std::size_t>(shape.layers) + l;
        const layer_gradients<Real>& grads = (*copies[e][s])[l];
        add_into(out.grad_attn[g], grads.attn);  // replicas in order
        out.grad_expert[g][e] = grads.expert;    // expert e lives on member e
      }
    }
  return out;
}

// What the threads of one run share.
template <class Real, int Layers>
class moe_job {
 public:
  moe_job(const settings& cfg, const dualpipe::schedule_table& table)
      : cfg_(cfg),
        table_(table),
        shape_{table.info().stages, cfg.layers, cfg.experts, cfg.tokens, cfg.run.hidden},
        model_(make_model<Real>(shape_, cfg.run.seed)),
        data_(make_batch<Real>(shape_, table.info().microbatches, cfg.run.seed)),
        world_(table.info().ranks, cfg.experts, std::chrono::milliseconds(cfg.run.timeout_ms),
               std::chrono::milliseconds(cfg.exchange_timeout_ms > 0 ? cfg.exchange_timeout_ms
                                                                     : cfg.run.timeout_ms),
               std::chrono::microseconds(cfg.run.spin_us),
               {cfg.link_latency_us, cfg.link_us_per_kib}),
        ranks_(static_cast<std::size_t>(world_.size())),
        records_{std::vector<rank_record<Real>>(static_cast<std::size_t>(world_.size())),
                 std::vector<rank_record<Real>>(static_cast<std::size_t>(world_.size()))},
        times_{std::vector<std::vector<std::int64_t>>(static_cast<std::size_t>(world_.size())),
               std::vector<std::vector<std::int64_t>>(static_cast<std::size_t>(world_.size()))},
        pairs_(static_cast<std::size_t>(world_.size())) {}

  // The exit code: 0 all checks passed, 1 a check or a thread failed.
  int run() {
    std::vector<int> codes(static_cast<std::size_t>(world_.size()), 1);
    train_mlp::on_rank_threads(world_.size(),
                               [&](int w) { codes[static_cast<std::size_t>(w)] = run_thread(w); });
    return *std::max_element(codes.begin(), codes.end());
  }

 private:
  static constexpr ov::pair_mode modes[2] = {ov::pair_mode::overlapped, ov::pair_mode::sequential};

  int run_thread(int w) {
    const int P = world_.pipeline_ranks();
    const int p = w % P, e = w / P;
    try {
      // The ranks live until every thread has ended: a thread that stops
      // early must not take with it what another may still be reading (its
      // stages, during the mirrored sum).
      auto& mine = ranks_[static_cast<std::size_t>(w)];
      mine = std::make_unique<moe_rank<Real, Layers>>(table_.view(), world_, p, e, model_, data_);
      moe_rank<Real, Layers>& rank = *mine;
      if (w == cfg_.fail_rank) {
        rank_context& c = rank.context();
        using failure = rank_context::failure;
        c.fail_how = cfg_.fail_lane == "compute"         ? failure::compute
                     : cfg_.fail_lane == "communication" ? failure::communication
                                                         : failure::stall;
        c.fail_message = "world rank " + std::to_string(w) + " (pipeline rank " +
                         std::to_string(p) + ", replica " + std::to_string(e) + ") fails in " +
                         (c.fail_how == failure::compute ? "mlp(B)" : "dispatch(B)") +
                         ", as --fail-rank told it to";
        c.fail_armed = true;
      }
      world_.barrier(w, "the start");
      for (int k = 0; k < 2; ++k) checked_step(rank, w, k);
      world_.barrier(w, "the checks");
      if (w == 0) passed_ = report();
      world_.barrier(w, "the verdict");
      if (!passed_) return 1;
      if (cfg_.run.steps > 0) timed_steps(rank, w);
      return 0;
    } catch (const std::exception& x) {
      world_.abort(w, x.what());
      std::fprintf(stderr, "moe-overlap: world rank %d (pipeline rank %d, replica %d): %s\n", w, p,
                   e, x.what());
      return 1;
    }
  }

  void checked_step(moe_rank<Real, Layers>& rank, int w, int k) {
    rank_record<Real>& out = records_[k][static_cast<std::size_t>(w)];
    rank.set_mode(modes[k]);
    rank.keep_gradients_per_microbatch(true);
    world_.barrier(w, "a checked step's start");
    rank.train_checked(out);
    world_.barrier(w, "a checked training step's end");
    // DualPipe: the lower rank of each mirrored pair sums both copies.
    const int p = w % world_.pipeline_ranks();
    const int mirror = dualpipe::mirror_rank(table_.info(), p);
    if (mirror > p) {
      moe_rank<Real, Layers>& other = *ranks_[static_cast<std::size_t>(w - p + mirror)];
      for (const int s : rank.executor().local_stages())
        rank.stage(s).sum_with_mirror(other.stage(s));
    }
    world_.barrier(w, "the mirrored sum");
    rank.infer_checked(out);
  }

  // Rank 0: the comparisons and the verdict.
  bool report() {
    const dualpipe::schedule_info info = table_.info();
    const step_record<Real> overlapped = merge_records(records_[0], shape_, info.microbatches);
    const step_record<Real> sequential = merge_records(records_[1], shape_, info.microbatches);
    const step_record<Real> reference = reference_step(model_, data_);
    const bool mirrored = info.where == dualpipe::placement::mirrored;
    std::printf("overlapped pairs per training step: %d (all threads)\n",
                overlapped.overlapped_pairs);
    std::printf("\noverlapped pairs against sequential pairs (forward, then backward):\n");
    const bool a = print_comparison("sequential pairs", compare(sequential, overlapped), mirrored);
    std::printf("\noverlapped pairs against the un-pipelined model:\n");
    const bool b =
        print_comparison("the un-pipelined model", compare(reference, overlapped), mirrored);
    std::printf("\nsequential pairs against the un-pipelined model:\n");
    const bool c =
        print_comparison("the un-pipelined model", compare(reference, sequential), mirrored);
    const bool pairs_ran = overlapped.overlapped_pairs > 0 || !has_pairs(table_.view());
    if (!pairs_ran) std::printf("FAIL the schedule has overlapped pairs but none ran\n");
    const bool ok = a && b && c && pairs_ran;
    std::printf("%s\n", ok ? "PASS" : "FAIL");
    std::fflush(stdout);
    return ok;
  }

  static bool has_pairs(dualpipe::table_view t) {
    return std::any_of(t.instructions.begin(), t.instructions.end(), [](const auto& x) {
      return x.kind == dualpipe::op::overlapped_forward_backward;
    });
  }

  // Timed steps in each mode; the overlapped ones recorded on the lanes.
  void timed_steps(moe_rank<Real, Layers>& rank, int w) {
    using clock = std::chrono::steady_clock;
    const auto ns = [](clock::time_point t) {
      return std::chrono::duration_cast<std::chrono::nanoseconds>(t.time_since_epoch()).count();
    };
    rank_context& c = rank.context();
    for (int k = 0; k < 2; ++k) {
      rank.set_mode(modes[k]);
      rank.keep_gradients_per_microbatch(false);
      world_.barrier(w, "a timed run's start");
      rank.train();  // warm-up
      c.lanes.record(k == 0);
      c.lanes.clear_records();
      c.recorded_pairs.clear();
      std::vector<std::int64_t>& t = times_[k][static_cast<std::size_t>(w)];
      for (int step = 0; step < cfg_.run.steps; ++step) {
        world_.barrier(w, "a timed step's start");
        const clock::time_point t0 = clock::now();
        rank.train();
        const clock::time_point t1 = clock::now();
        t.push_back(ns(t0));
        t.push_back(ns(t1));
      }
      c.lanes.record(false);
      if (k == 0) pairs_[static_cast<std::size_t>(w)] = measured_pairs(c);
    }
    world_.barrier(w, "the timed steps' end");
    if (w == 0) print_summary();
  }

  // Step times over all threads: from the earliest start to the latest end.
  [[nodiscard]] std::vector<double> step_ms(int k) const {
    std::vector<double> out;
    for (int step = 0; step < cfg_.run.steps; ++step) {
      std::int64_t first = INT64_MAX, last = INT64_MIN;
      for (const std::vector<std::int64_t>& t : times_[k]) {
        first = std::min(first, t[static_cast<std::size_t>(2 * step)]);
        last = std::max(last, t[static_cast<std::size_t>(2 * step + 1)]);
      }
      out.push_back(static_cast<double>(last - first) * 1e-6);
    }
    return out;
  }

  void print_summary() {
    const train_mlp::step_time_summary o = train_mlp::summarize(step_ms(0));
    const train_mlp::step_time_summary s = train_mlp::summarize(step_ms(1));
    std::vector<measured_pair> all;
    for (std::vector<measured_pair>& v : pairs_)
      for (measured_pair& x : v) all.push_back(std::move(x));
    const pair_summary ps = summarize_pairs(stage_type::programs, all);
    const dualpipe::schedule_info info = table_.info();
    std::printf("step time, overlapped pairs: median %.3f ms (min %.3f, max %.3f) over %zu steps\n",
                o.median, o.min, o.max, o.steps);
    std::printf("step time, sequential pairs: median %.3f ms (min %.3f, max %.3f)\n", s.median,
                s.min, s.max);
    print_pair_summary(ps);
    if (!cfg_.pair_timeline.empty()) write_pair_timeline(cfg_.pair_timeline, ps);
    std::printf(
        "{\"example\": \"moe-overlap\", \"schedule\": \"%s\", \"ranks\": %d, \"experts\": %d, "
        "\"microbatches\": %d, \"layers\": %d, \"tokens\": %d, \"hidden\": %d, "
        "\"microbatch_size\": %d, \"dtype\": \"%s\", \"transport\": \"threads\", \"steps\": %zu, "
        "\"link_us_per_kib\": %g, \"link_latency_us\": %g, "
        "\"step_ms_median\": %.4f, \"step_ms_min\": %.4f, "
        "\"step_ms_overlapped\": %.4f, \"step_ms_sequential\": %.4f, "
        "\"pairs_measured\": %zu, \"comm_hidden_fraction\": %.4f, "
        "\"pair_ms_measured\": %.4f, \"pair_ms_predicted\": %.4f, "
        "\"pair_compute_ms\": %.4f, \"pair_communication_ms\": %.4f}\n",
        cfg_.run.schedule.c_str(), info.ranks, cfg_.experts, info.microbatches, cfg_.layers,
        cfg_.tokens, cfg_.run.hidden, cfg_.tokens, cfg_.run.dtype.c_str(), o.steps,
        cfg_.link_us_per_kib, cfg_.link_latency_us, o.median, o.min, o.median, s.median, ps.pairs,
        ps.hidden_fraction, ps.measured_us * 1e-3, ps.predicted_us * 1e-3, ps.compute_us * 1e-3,
        ps.communication_us * 1e-3);
    std::fflush(stdout);
  }

  void write_pair_timeline(const std::string& path, const pair_summary& ps) {
    FILE* f = std::fopen(path.c_str(), "w");
    const std::string text = pair_timeline_json(ps);
    if (f == nullptr || std::fwrite(text.data(), 1, text.size(), f) != text.size()) {
      if (f != nullptr) std::fclose(f);
      throw std::runtime_error("--pair-timeline: cannot write " + path);
    }
    std::fclose(f);
    std::printf("median measured pair written to %s\n", path.c_str());
  }

  using stage_type = moe_stage<Real, Layers>;

  const settings& cfg_;
  const dualpipe::schedule_table& table_;
  model_shape shape_;
  model<Real> model_;
  batch<Real> data_;
  world<Real> world_;
  std::vector<std::unique_ptr<moe_rank<Real, Layers>>> ranks_;  // [world rank]
  std::vector<rank_record<Real>> records_[2];                   // [mode][world rank]
  std::vector<std::vector<std::int64_t>> times_[2];  // [mode][world rank]: start, end, ...
  std::vector<std::vector<measured_pair>> pairs_;    // [world rank]
  bool passed_ = false;
};

}  // namespace moe_overlap
