// train-mlp-cuda: DualPipe or DualPipeV training of a small MLP on CUDA,
// checked against the same model run un-pipelined. Every stage is
// Linear(h, 4h) -> GELU -> Linear(4h, h) (cuBLAS GEMMs, kernels.cu), the loss
// is the MSE per micro-batch, the optimiser plain SGD. Each pipeline rank is a
// host thread with its own compute and communication streams; ranks talk
// through the device-local transport (all ranks on one GPU) or NCCL (one GPU
// per rank, communicators made with ncclCommInitAll). Checks: per micro-batch
// losses, weight gradients (1 - cosine similarity per stage) and inference
// outputs. Without a GPU it prints "no CUDA device: skipped" and exits 77.
#include <CLI/CLI.hpp>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <deque>
#include <exception>
#include <functional>
#include <future>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "dualpipe/cuda/buffer_pool.hpp"
#include "dualpipe/cuda/cublas.hpp"
#include "dualpipe/cuda/device.hpp"
#include "dualpipe/cuda/stream.hpp"
#include "dualpipe/runtime/executor.hpp"
#include "dualpipe/schedule/dualpipe.hpp"
#include "dualpipe/transport/device_local.hpp"
#if DUALPIPE_HAVE_NCCL
#include "dualpipe/transport/nccl.hpp"
#endif
#include "mlp.hpp"

namespace {

namespace cuda = dualpipe::cuda;
using mlp_cuda::tensor;

struct options {
  std::string schedule = "dualpipe";
  int ranks = 4;
  int microbatches = 0;  // 0: 2 * ranks, the fewest either schedule allows
  int hidden = 256;
  int rows = 32;
  int steps = 3;
  float lr = 0.05f;
  std::uint64_t seed = 1;
  std::string transport = "device-local";
  double tolerance = 1e-4;
};

// What one pipeline rank owns. Members are destroyed in reverse order: the
// executor (which waits for in-flight sends) before the transport, the
// stages (which hand buffers back) before their pool, the stream last.
template <class Transport>
struct rank_state {
  int rank = 0;
  int device = 0;
  cuda::stream compute;
  cuda::cublas_handle blas{compute.get()};
  cuda::buffer_pool<float> pool;
  std::deque<mlp_cuda::stage> stages;  // a deque: references stay valid
  std::optional<mlp_cuda::mse> loss;
  std::vector<tensor> inputs;
  std::vector<tensor> targets;
  std::vector<mlp_cuda::label> labels;
  std::unique_ptr<Transport> owned_transport;  // NCCL; the device-local network owns its own
  Transport* transport = nullptr;
  std::unique_ptr<dualpipe::executor<mlp_cuda::stage, Transport, mlp_cuda::mse>> exec;

  rank_state(int r, int d) : rank(r), device(d), compute(0) {}
};

struct host_data {
  std::vector<std::vector<float>> inputs, targets;  // per micro-batch, rows x hidden
};

host_data make_data(const options& o, int microbatches) {
  host_data d;
  mlp_cuda::random_stream r(o.seed * 31 + 17);
  const auto n = static_cast<std::size_t>(o.rows) * static_cast<std::size_t>(o.hidden);
  for (int m = 0; m < microbatches; ++m) {
    d.inputs.emplace_back(n);
    d.targets.emplace_back(n);
    r.fill(d.inputs.back(), 1.0f);
    r.fill(d.targets.back(), 0.5f);
  }
  return d;
}

tensor upload(const std::vector<float>& host, cudaStream_t stream) {
  tensor t(host.size());
  t.copy_from_host(host, stream);
  return t;
}

double one_minus_cosine(const std::vector<double>& a, const std::vector<double>& b) {
  double ab = 0, aa = 0, bb = 0;
  for (std::size_t i = 0; i < a.size(); ++i) {
    ab += a[i] * b[i];
    aa += a[i] * a[i];
    bb += b[i] * b[i];
  }
  if (aa == 0 || bb == 0) return aa == bb ? 0.0 : 1.0;
  return 1.0 - ab / std::sqrt(aa * bb);
}

// The un-pipelined model: every micro-batch through all stages in order on
// one stream, the same kernels, full backwards.
struct reference_model {
  cuda::stream compute{0};
  cuda::cublas_handle blas{compute.get()};
  cuda::buffer_pool<float> pool;
  std::deque<mlp_cuda::stage> stages;
  std::optional<mlp_cuda::mse> loss;
  std::vector<tensor> inputs, targets;

  reference_model(const options& o, int stage_count, int microbatches, const host_data& data) {
    for (int s = 0; s < stage_count; ++s)
      stages.emplace_back(s, o.hidden, o.rows, microbatches, compute.get(), blas.get(), pool);
    loss.emplace(compute.get(), microbatches);
    for (int m = 0; m < microbatches; ++m) {
      inputs.push_back(upload(data.inputs[static_cast<std::size_t>(m)], compute.get()));
      targets.push_back(upload(data.targets[static_cast<std::size_t>(m)], compute.get()));
    }
  }

  // Returns per micro-batch losses; gradients stay in the stages.
  std::vector<float> train_step() {
    tensor a, b, seed, grad_in;
    for (auto& s : stages) s.zero_grad();
    for (int m = 0; m < static_cast<int>(inputs.size()); ++m) {
      const mlp_cuda::label l{&targets[static_cast<std::size_t>(m)], m};
      const tensor* in = &inputs[static_cast<std::size_t>(m)];
      for (auto& s : stages) {
        s.forward(m, *in, a);
        std::swap(a, b);
        in = &b;
      }
      (void)(*loss)(b, l);
      loss->gradient(b, l, seed);
      for (auto it = stages.rbegin(); it != stages.rend(); ++it) {
        it->backward(m, seed, grad_in);
        std::swap(seed, grad_in);
      }
    }
    return loss->losses();
  }

  std::vector<std::vector<float>> infer() {
    std::vector<std::vector<float>> outputs;
    tensor a, b;
    for (auto& s : stages) s.set_inference(true);
    for (int m = 0; m < static_cast<int>(inputs.size()); ++m) {
      const tensor* in = &inputs[static_cast<std::size_t>(m)];
      for (auto& s : stages) {
        s.forward(m, *in, a);
        std::swap(a, b);
        in = &b;
      }
      outputs.emplace_back(b.size());
      b.copy_to_host(outputs.back(), compute.get());
    }
    compute.synchronize();
    for (auto& s : stages) s.set_inference(false);
    return outputs;
  }
};

// Runs f(rank) on one host thread per rank, with the rank's device current,
// and rethrows the first failure (a rank's own error before the "aborted"
// errors it caused on the others).
template <class F>
void on_every_rank(int ranks, const std::vector<int>& device_of, F&& f) {
  std::vector<std::future<void>> running;
  for (int r = 0; r < ranks; ++r)
    running.push_back(std::async(std::launch::async, [&, r] {
      cuda::set_device(device_of[static_cast<std::size_t>(r)]);
      f(r);
    }));
  std::exception_ptr first, aborted;
  for (auto& t : running) {
    try {
      t.get();
    } catch (const dualpipe::pipeline_aborted&) {
      if (!aborted) aborted = std::current_exception();
    } catch (...) {
      if (!first) first = std::current_exception();
    }
  }
  if (first) std::rethrow_exception(first);
  if (aborted) std::rethrow_exception(aborted);
}

template <class Transport, class MakeTransport>
int run(const options& o, const dualpipe::schedule_table& table, const std::vector<int>& device_of,
        MakeTransport&& make_transport) {
  const int P = table.info().ranks, S = table.info().stages, N = table.info().microbatches;
  const host_data data = make_data(o, N);
  std::vector<mlp_cuda::stage_parameters> params;
  for (int s = 0; s < S; ++s) params.push_back(mlp_cuda::initial_parameters(s, o.hidden, o.seed));

  // Set-up: each rank on its own thread (streams and handles belong to a device).
  std::vector<std::unique_ptr<rank_state<Transport>>> ranks(static_cast<std::size_t>(P));
  on_every_rank(P, device_of, [&](int r) {
    auto st = std::make_unique<rank_state<Transport>>(r, device_of[static_cast<std::size_t>(r)]);
    make_transport(*st);
    st->loss.emplace(st->compute.get(), N);
    st->exec = std::make_unique<dualpipe::executor<mlp_cuda::stage, Transport, mlp_cuda::mse>>(
        table.view(), *st->transport, [&st, &o, N](int s) -> mlp_cuda::stage& {
          return st->stages.emplace_back(s, o.hidden, o.rows, N, st->compute.get(), st->blas.get(),
                                         st->pool);
        });
    for (const int m : st->exec->entering_microbatches())
      st->inputs.push_back(upload(data.inputs[static_cast<std::size_t>(m)], st->compute.get()));
    st->targets.reserve(st->exec->leaving_microbatches().size());
    for (const int m : st->exec->leaving_microbatches()) {
      st->targets.push_back(upload(data.targets[static_cast<std::size_t>(m)], st->compute.get()));
      st->labels.push_back({&st->targets.back(), m});
    }
    ranks[static_cast<std::size_t>(r)] = std::move(st);
  });

  cuda::set_device(device_of[0]);
  reference_model reference(o, S, N, data);

  double worst_loss = 0, worst_cosine = 0;
  std::vector<double> step_ms;
  std::vector<std::size_t> allocations_after_first(static_cast<std::size_t>(P));
  for (int step = 1; step <= o.steps; ++step) {
    // Pipelined step.
    std::vector<std::vector<std::pair<int, mlp_cuda::stage_parameters>>> grads(
        static_cast<std::size_t>(P));
    std::vector<float> losses(static_cast<std::size_t>(N), std::nanf(""));
    std::vector<std::vector<float>> rank_losses(static_cast<std::size_t>(P));
    on_every_rank(P, device_of, [&](int r) {
      auto& st = *ranks[static_cast<std::size_t>(r)];
      for (auto& s : st.stages) {
        s.load(params[static_cast<std::size_t>(s.id())]);
        s.zero_grad();
      }
      st.compute.synchronize();
    });
    const auto start = std::chrono::steady_clock::now();
    on_every_rank(P, device_of, [&](int r) {
      auto& st = *ranks[static_cast<std::size_t>(r)];
      (void)st.exec->step(st.inputs, st.labels, *st.loss);
      st.compute.synchronize();  // the step boundary
    });
    step_ms.push_back(
        std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start)
            .count());
    on_every_rank(P, device_of, [&](int r) {
      auto& st = *ranks[static_cast<std::size_t>(r)];
      for (auto& s : st.stages)
        grads[static_cast<std::size_t>(r)].emplace_back(s.id(), s.gradients());
      rank_losses[static_cast<std::size_t>(r)] = st.loss->losses();
      if (step == 1) allocations_after_first[static_cast<std::size_t>(r)] = st.pool.allocations();
    });
    for (int r = 0; r < P; ++r)
      for (const int m : ranks[static_cast<std::size_t>(r)]->exec->leaving_microbatches())
        losses[static_cast<std::size_t>(m)] =
            rank_losses[static_cast<std::size_t>(r)][static_cast<std::size_t>(m)];
    // Mirror copies (DualPipe) hold one stage twice: their gradients add up,
    // summed in rank order so that every run sums alike.
    std::vector<mlp_cuda::stage_parameters> total(static_cast<std::size_t>(S),
                                                  mlp_cuda::stage_parameters::zeros(o.hidden));
    for (const auto& per_rank : grads)
      for (const auto& [s, g] : per_rank) total[static_cast<std::size_t>(s)].add(g);

    // Reference step.
    cuda::set_device(device_of[0]);
    for (int s = 0; s < S; ++s)
      reference.stages[static_cast<std::size_t>(s)].load(params[static_cast<std::size_t>(s)]);
    const std::vector<float> ref_losses = reference.train_step();

    double loss_diff = 0, cosine = 0, mean_loss = 0;
    for (int m = 0; m < N; ++m) {
      const double a = losses[static_cast<std::size_t>(m)],
                   b = ref_losses[static_cast<std::size_t>(m)];
      loss_diff = std::max(loss_diff,
                           std::isfinite(a) ? std::abs(a - b) / std::max(std::abs(b), 1e-12) : 1.0);
      mean_loss += b / N;
    }
    for (int s = 0; s < S; ++s) {
      const auto ref = reference.stages[static_cast<std::size_t>(s)].gradients();
      cosine =
          std::max(cosine, one_minus_cosine(total[static_cast<std::size_t>(s)].flat(), ref.flat()));
      params[static_cast<std::size_t>(s)].sgd(total[static_cast<std::size_t>(s)], o.lr);
    }
    worst_loss = std::max(worst_loss, loss_diff);
    worst_cosine = std::max(worst_cosine, cosine);
    std::printf(
        "step %d: mean loss %.6f, max relative loss difference %.2e, max 1-cos(grad) %.2e, %.2f "
        "ms\n",
        step, mean_loss, loss_diff, cosine, step_ms.back());
  }

  // Inference with the trained weights.
  std::vector<std::vector<float>> outputs(static_cast<std::size_t>(N));
  on_every_rank(P, device_of, [&](int r) {
    auto& st = *ranks[static_cast<std::size_t>(r)];
    for (auto& s : st.stages) {
      s.load(params[static_cast<std::size_t>(s.id())]);
      s.set_inference(true);
    }
    dualpipe::step_options so;
    so.forward_only = true;
    so.return_outputs = true;
    const auto& result = st.exec->step(st.inputs, so);
    for (std::size_t i = 0; i < result.microbatches.size(); ++i) {
      auto& host = outputs[static_cast<std::size_t>(result.microbatches[i])];
      host.resize(result.outputs[i].size());
      result.outputs[i].copy_to_host(host, st.compute.get());
    }
    st.compute.synchronize();
    for (auto& s : st.stages) s.set_inference(false);
  });
  cuda::set_device(device_of[0]);
  for (int s = 0; s < S; ++s)
    reference.stages[static_cast<std::size_t>(s)].load(params[static_cast<std::size_t>(s)]);
  const auto ref_outputs = reference.infer();
  double out_diff = 0, out_scale = 0;
  for (int m = 0; m < N; ++m) {
    const auto& a = outputs[static_cast<std::size_t>(m)];
    const auto& b = ref_outputs[static_cast<std::size_t>(m)];
    if (a.size() != b.size()) {
      out_diff = 1e30;
      continue;
    }
    for (std::size_t i = 0; i < a.size(); ++i) {
      out_diff = std::max(out_diff, static_cast<double>(std::abs(a[i] - b[i])));
      out_scale = std::max(out_scale, static_cast<double>(std::abs(b[i])));
    }
  }
  const double out_rel = out_diff / std::max(out_scale, 1e-12);

  std::size_t grown = 0;
  for (int r = 0; r < P; ++r)
    grown += ranks[static_cast<std::size_t>(r)]->pool.allocations() -
             allocations_after_first[static_cast<std::size_t>(r)];
  std::vector<double> later(step_ms.begin() + (step_ms.size() > 1 ? 1 : 0), step_ms.end());
  std::sort(later.begin(), later.end());
  std::printf("inference: max |output - reference| %.2e (relative %.2e)\n", out_diff, out_rel);
  std::printf("activation buffers allocated after step 1: %zu\n", grown);
  std::printf("step time: median %.3f ms over %zu step(s) after the first\n",
              later.empty() ? 0.0 : later[later.size() / 2], later.size());
  const bool ok =
      worst_loss <= o.tolerance && worst_cosine <= o.tolerance && out_rel <= o.tolerance;
  std::printf("%s: %s P=%d N=%d hidden=%d microbatch-size=%d, transport %s (tolerance %.0e)\n",
              ok ? "PASS" : "FAIL", o.schedule.c_str(), P, N, o.hidden, o.rows, o.transport.c_str(),
              o.tolerance);
  return ok ? 0 : 1;
}

int run_schedule(const options& o, int devices);

}  // namespace

int main(int argc, char** argv) {
  options o;
  CLI::App app{
      "Train a small MLP with DualPipe/DualPipeV on CUDA and check it against the "
      "un-pipelined model"};
  app.add_option("--schedule", o.schedule, "dualpipe, dualpipev, or both (one after the other)")
      ->check(CLI::IsMember({"dualpipe", "dualpipev", "both"}));
  app.add_option("--ranks", o.ranks, "pipeline ranks P")->check(CLI::Range(2, 64));
  app.add_option("--microbatches", o.microbatches, "micro-batches N (default 2P)")
      ->check(CLI::Range(0, 1 << 16));
  app.add_option("--hidden", o.hidden, "hidden size h")->check(CLI::Range(1, 1 << 14));
  app.add_option("--microbatch-size", o.rows, "samples per micro-batch, B")
      ->check(CLI::Range(1, 1 << 16));
  app.add_option("--steps", o.steps, "training steps")->check(CLI::Range(1, 10000));
  app.add_option("--lr", o.lr, "SGD learning rate");
  app.add_option("--seed", o.seed, "seed of weights and data");
  app.add_option("--transport", o.transport,
                 "device-local (every rank on one GPU) or nccl (one GPU per rank)")
      ->check(CLI::IsMember({"device-local", "nccl"}));
  app.add_option("--tolerance", o.tolerance,
                 "largest accepted relative loss/output difference and 1-cos of gradients");
  CLI11_PARSE(app, argc, argv);

  const int devices = cuda::cuda_device_count();
  if (devices == 0) {
    std::puts("no CUDA device: skipped");
    return cuda::exit_skipped;
  }
  if (o.microbatches == 0) o.microbatches = 2 * o.ranks;

  if (o.schedule == "both") {
    options each = o;
    each.schedule = "dualpipe";
    const int first = run_schedule(each, devices);
    each.schedule = "dualpipev";
    const int second = run_schedule(each, devices);
    return first != 0 ? first : second;
  }
  return run_schedule(o, devices);
}

namespace {

int run_schedule(const options& o, int devices) {
  try {
    const dualpipe::schedule_table table =
        o.schedule == "dualpipe" ? dualpipe::schedules::dualpipe(o.ranks, o.microbatches)
                                 : dualpipe::schedules::dualpipev(o.ranks, o.microbatches);
    const auto message = static_cast<std::size_t>(o.rows) * static_cast<std::size_t>(o.hidden);
    if (o.transport == "device-local") {
      using transport = dualpipe::device_local_transport<tensor>;
      const std::vector<int> device_of(static_cast<std::size_t>(o.ranks), 0);
      cuda::set_device(0);
      dualpipe::device_local_network<tensor> network(o.ranks);
      return run<transport>(o, table, device_of, [&network](rank_state<transport>& st) {
        st.transport = &network.attach(st.rank, st.compute.get());
      });
    }
#if DUALPIPE_HAVE_NCCL
    if (devices < o.ranks) {
      std::fprintf(stderr,
                   "train-mlp-cuda: --transport nccl runs one pipeline rank per GPU and needs %d "
                   "GPUs, this machine has %d (NCCL refuses two ranks of one communicator on one "
                   "GPU); use --transport device-local for several ranks on one GPU\n",
                   o.ranks, devices);
      return 2;
    }
    using transport = dualpipe::nccl_transport<tensor>;
    std::vector<int> device_of(static_cast<std::size_t>(o.ranks));
    for (int r = 0; r < o.ranks; ++r) device_of[static_cast<std::size_t>(r)] = r;
    std::vector<ncclComm_t> comms(static_cast<std::size_t>(o.ranks), nullptr);
    DUALPIPE_NCCL_CHECK(ncclCommInitAll(comms.data(), o.ranks, device_of.data()));
    struct destroy_comms {
      std::vector<ncclComm_t>& c;
      ~destroy_comms() {
        for (ncclComm_t x : c) (void)ncclCommDestroy(x);
      }
    } cleanup{comms};
    return run<transport>(o, table, device_of, [&comms, message](rank_state<transport>& st) {
      st.owned_transport =
          std::make_unique<transport>(comms[static_cast<std::size_t>(st.rank)], st.rank,
                                      static_cast<int>(comms.size()), st.compute.get(), message);
      st.transport = st.owned_transport.get();
    });
#else
    (void)message;
    (void)devices;
    std::fprintf(stderr, "train-mlp-cuda: built without NCCL; use --transport device-local\n");
    return 2;
#endif
  } catch (const std::exception& e) {
    std::fprintf(stderr, "train-mlp-cuda: %s\n", e.what());
    return 1;
  }
}

}  // namespace
