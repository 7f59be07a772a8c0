// pipeline-gpu: measured against predicted. Measures the per-operation GPU
// times of one stage (F, B, W, and F followed by B as the overlapped pair
// runs without an overlapping stage), then real pipeline steps of DualPipe
// and of 1F1B at the same stage costs on the device-local transport (every
// rank a host thread with its own streams on one GPU), and compares each
// step time with simulate()'s makespan from the measured per-op times.
//
// Two stage kinds:
//   spin  each operation is a one-thread kernel that spins a fixed number
//         of cycles: it holds one SM, so the virtual ranks run side by side
//         as if each had its own GPU; the simulator's prediction applies.
//   mlp   the example's Linear-GELU-Linear stage (cuBLAS): the ranks share
//         one GPU, so the one-GPU-per-rank prediction is a lower bound and
//         the ranks' summed work an upper one; both are printed.
// Without a GPU it prints "no CUDA device: skipped" and exits 77.
#include <CLI/CLI.hpp>

#include <algorithm>
#include <barrier>
#include <chrono>
#include <cstdio>
#include <deque>
#include <exception>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "dualpipe/analysis/simulate.hpp"
#include "dualpipe/cuda/buffer_pool.hpp"
#include "dualpipe/cuda/cublas.hpp"
#include "dualpipe/cuda/device.hpp"
#include "dualpipe/cuda/event.hpp"
#include "dualpipe/cuda/stream.hpp"
#include "dualpipe/runtime/executor.hpp"
#include "dualpipe/schedule/dualpipe.hpp"
#if __has_include("dualpipe/schedule/one_f_one_b.hpp")
#include "dualpipe/schedule/one_f_one_b.hpp"
#define DUALPIPE_BENCH_HAVE_1F1B 1
#else
#define DUALPIPE_BENCH_HAVE_1F1B 0
#endif
#include "dualpipe/transport/device_local.hpp"
#include "kernels.hpp"
#include "mlp.hpp"

namespace {

namespace cuda = dualpipe::cuda;
using mlp_cuda::tensor;

struct options {
  int ranks = 8;
  int microbatches = 32;
  int steps = 5;
  double unit_us = 100.0;  // spin: the forward's time; B = 2 units, W = 1 unit
  int hidden = 1024;
  int rows = 1024;
  std::string kinds = "spin,mlp";
};

// --- the spin stage ----------------------------------------------------------

struct spin_costs {
  long long forward = 0, backward = 0, weight = 0;  // GPU cycles
};

class spin_stage {
 public:
  spin_stage(spin_costs c, cudaStream_t stream) : c_(c), stream_(stream) {}
  void forward(int, const tensor& in, tensor& out) {
    out.resize(in.size());
    mlp_cuda::spin(c_.forward, stream_);
    DUALPIPE_CUDA_CHECK(cudaMemcpyAsync(out.data(), in.data(), in.size() * sizeof(float),
                                        cudaMemcpyDeviceToDevice, stream_));
  }
  void backward(int, const tensor& g, tensor& gi) {
    gi.resize(g.size());
    mlp_cuda::spin(c_.backward, stream_);
    DUALPIPE_CUDA_CHECK(cudaMemcpyAsync(gi.data(), g.data(), g.size() * sizeof(float),
                                        cudaMemcpyDeviceToDevice, stream_));
  }
  void backward_input(int, const tensor& g, tensor& gi) {
    gi.resize(g.size());
    mlp_cuda::spin(c_.backward - c_.weight, stream_);
    DUALPIPE_CUDA_CHECK(cudaMemcpyAsync(gi.data(), g.data(), g.size() * sizeof(float),
                                        cudaMemcpyDeviceToDevice, stream_));
  }
  void backward_weight(int) { mlp_cuda::spin(c_.weight, stream_); }

 private:
  spin_costs c_;
  cudaStream_t stream_;
};

struct spin_loss {
  using label_type = int;
  cudaStream_t stream;
  int operator()(const tensor&, const int& mb) const { return mb; }
  void gradient(const tensor& y, const int&, tensor& seed) const {
    seed.resize(y.size());
    DUALPIPE_CUDA_CHECK(cudaMemsetAsync(seed.data(), 0, y.size() * sizeof(float), stream));
  }
};

// --- per-operation times -------------------------------------------------------

struct op_times {
  double forward = 0, backward = 0, weight = 0, pair = 0;  // ms per operation
};

// Runs `body(i)` `reps` times on `stream` between two events: ms per call.
template <class Body>
double time_ops(cudaStream_t stream, int reps, Body&& body) {
  cuda::event start(cuda::event_timing::enabled), stop(cuda::event_timing::enabled);
  start.record(stream);
  for (int i = 0; i < reps; ++i) body(i);
  stop.record(stream);
  stop.synchronize();
  return static_cast<double>(cuda::elapsed_ms(start, stop)) / reps;
}

template <class Stage>
op_times measure_ops(Stage& s, cudaStream_t stream, std::size_t message, int reps) {
  tensor in(message), out, g(message), gi;
  in.fill_zero(stream);
  g.fill_zero(stream);
  op_times t;
  // Warm-up: first calls size buffers and load kernels.
  for (int i = 0; i < reps; ++i) s.forward(i, in, out);
  for (int i = 0; i < reps; ++i) s.backward(i, g, gi);
  t.forward = time_ops(stream, reps, [&](int i) { s.forward(i, in, out); });
  t.backward = time_ops(stream, reps, [&](int i) { s.backward(i, g, gi); });
  for (int i = 0; i < reps; ++i) s.forward(i, in, out);
  for (int i = 0; i < reps; ++i) s.backward_input(i, g, gi);
  t.weight = time_ops(stream, reps, [&](int i) { s.backward_weight(i); });
  t.pair = time_ops(stream, reps, [&](int i) {
    s.forward(i, in, out);
    s.backward(i, g, gi);
  });
  return t;
}

// --- pipeline steps -------------------------------------------------------------

// Labels: spin losses take the micro-batch id; the MLP's take a target.
std::vector<int> make_labels(const spin_loss&, std::span<const int> leaving, std::size_t,
                             cudaStream_t, std::deque<tensor>&) {
  return {leaving.begin(), leaving.end()};
}
std::vector<mlp_cuda::label> make_labels(const mlp_cuda::mse&, std::span<const int> leaving,
                                         std::size_t message, cudaStream_t stream,
                                         std::deque<tensor>& targets) {
  std::vector<mlp_cuda::label> labels;
  for (const int m : leaving) {
    targets.emplace_back(message).fill_zero(stream);
    labels.push_back({&targets.back(), m});
  }
  return labels;
}

// Runs `steps` + 1 steps of `table` (the first one warms up) with one host
// thread per rank; returns the wall time of each measured step in ms, from
// a barrier before it to a barrier after every rank's stream drained.
template <class Stage, class Loss, class MakeStage, class MakeLoss>
std::vector<double> run_steps(const dualpipe::schedule_table& table, std::size_t message, int steps,
                              MakeStage&& make_stage, MakeLoss&& make_loss) {
  using transport = dualpipe::device_local_transport<tensor>;
  const int P = table.info().ranks;
  cuda::set_device(0);
  dualpipe::device_local_network<tensor> network(P);
  std::barrier sync(P);
  std::vector<double> times;
  std::mutex failure_mutex;
  std::exception_ptr failure;
  std::chrono::steady_clock::time_point start;
  std::vector<std::thread> threads;
  for (int r = 0; r < P; ++r)
    threads.emplace_back([&, r] {
      transport* attached = nullptr;
      try {
        cuda::set_device(0);
        cuda::stream compute;
        cuda::cublas_handle blas(compute.get());
        cuda::buffer_pool<float> pool;
        std::deque<Stage> stages;
        Loss loss = make_loss(compute.get());
        auto& t = network.attach(r, compute.get());
        attached = &t;
        dualpipe::executor<Stage, transport, Loss> exec(table.view(), t, [&](int) -> Stage& {
          return make_stage(stages, compute.get(), blas.get(), pool);
        });
        std::vector<tensor> inputs(exec.entering_microbatches().size());
        for (auto& x : inputs) {
          x.resize(message);
          x.fill_zero(compute.get());
        }
        std::deque<tensor> targets;  // what the labels point to
        const std::vector<typename Loss::label_type> labels =
            make_labels(loss, exec.leaving_microbatches(), message, compute.get(), targets);
        compute.synchronize();
        for (int step = 0; step <= steps; ++step) {
          sync.arrive_and_wait();
          if (r == 0) start = std::chrono::steady_clock::now();
          (void)exec.step(inputs, labels, loss);
          compute.synchronize();
          sync.arrive_and_wait();
          if (r == 0 && step > 0)
            times.push_back(
                std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start)
                    .count());
        }
      } catch (const std::exception& e) {
        // Stop the other ranks (they would wait for this one) and leave the barrier.
        if (attached != nullptr) attached->abort(e.what());
        {
          const std::lock_guard lock(failure_mutex);
          if (!failure) failure = std::current_exception();
        }
        sync.arrive_and_drop();
      }
    });
  for (auto& t : threads) t.join();
  if (failure) std::rethrow_exception(failure);
  return times;
}

double median(std::vector<double> v) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

struct row {
  std::string kind, schedule;
  double measured = 0, predicted = 0, serial = 0, bubble = 0;
};

template <class Stage, class Loss, class MakeStage, class MakeLoss>
void bench_schedules(const options& o, const std::string& kind, std::size_t message,
                     const op_times& t, MakeStage make_stage, MakeLoss make_loss,
                     std::vector<row>& rows) {
  dualpipe::cost_model costs;
  costs.forward = t.forward;
  costs.backward = t.backward;
  costs.weight = t.weight;
  costs.overlapped = t.pair;
  std::vector<std::pair<std::string, dualpipe::schedule_table>> tables;
  tables.emplace_back("dualpipe", dualpipe::schedules::dualpipe(o.ranks, o.microbatches));
#if DUALPIPE_BENCH_HAVE_1F1B
  tables.emplace_back("1f1b", dualpipe::schedules::one_f_one_b(o.ranks, o.microbatches));
#endif
  for (auto& [name, table] : tables) {
    const auto sim = dualpipe::simulate(table.view(), costs);
    double serial = 0;
    for (const auto& r : sim.ranks) serial += r.busy;
    const auto times = run_steps<Stage, Loss>(table, message, o.steps, make_stage, make_loss);
    rows.push_back({kind, name, median(times), sim.makespan, serial, sim.bubble_max});
  }
}

}  // namespace

int main(int argc, char** argv) {
  options o;
  CLI::App app{
      "Per-operation GPU times, pipeline step times and the simulator's prediction: "
      "DualPipe against 1F1B on the device-local transport"};
  app.add_option("--ranks", o.ranks, "pipeline ranks P (virtual, on one GPU)")
      ->check(CLI::Range(2, 64));
  app.add_option("--microbatches", o.microbatches, "micro-batches N")->check(CLI::Range(4, 4096));
  app.add_option("--steps", o.steps, "measured steps (after one warm-up step)")
      ->check(CLI::Range(1, 1000));
  app.add_option("--unit-us", o.unit_us, "spin: microseconds of one forward")
      ->check(CLI::Range(1.0, 1e6));
  app.add_option("--hidden", o.hidden, "mlp: hidden size h")->check(CLI::Range(1, 1 << 14));
  app.add_option("--microbatch-size", o.rows, "mlp: samples per micro-batch")
      ->check(CLI::Range(1, 1 << 16));
  app.add_option("--kinds", o.kinds, "stage kinds to run: spin, mlp or spin,mlp");
  CLI11_PARSE(app, argc, argv);

  if (cuda::cuda_device_count() == 0) {
    std::puts("no CUDA device: skipped");
    return cuda::exit_skipped;
  }
  try {
    cuda::set_device(0);
    cudaDeviceProp prop{};
    DUALPIPE_CUDA_CHECK(cudaGetDeviceProperties(&prop, 0));
    int clock_khz = 0;
    DUALPIPE_CUDA_CHECK(cudaDeviceGetAttribute(&clock_khz, cudaDevAttrClockRate, 0));
    std::printf("device: %s, %d SMs, clock %d MHz; P=%d N=%d, %d measured steps\n", prop.name,
                prop.multiProcessorCount, clock_khz / 1000, o.ranks, o.microbatches, o.steps);
    std::vector<row> rows;

    if (o.kinds.find("spin") != std::string::npos) {
      const auto unit = static_cast<long long>(o.unit_us * clock_khz / 1000.0);
      const spin_costs c{unit, 2 * unit, unit};
      const std::size_t message = 4096;
      cuda::stream s;
      spin_stage probe(c, s.get());
      const op_times t = measure_ops(probe, s.get(), message, 20);
      std::printf("spin per-op ms: F %.4f  B %.4f  W %.4f  F+B %.4f\n", t.forward, t.backward,
                  t.weight, t.pair);
      bench_schedules<spin_stage, spin_loss>(
          o, "spin", message, t,
          [c](std::deque<spin_stage>& st, cudaStream_t stream, cublasHandle_t,
              cuda::buffer_pool<float>&) -> spin_stage& { return st.emplace_back(c, stream); },
          [](cudaStream_t stream) { return spin_loss{stream}; }, rows);
    }
    if (o.kinds.find("mlp") != std::string::npos) {
      const std::size_t message =
          static_cast<std::size_t>(o.hidden) * static_cast<std::size_t>(o.rows);
      const int N = o.microbatches;
      cuda::stream s;
      cuda::cublas_handle blas(s.get());
      cuda::buffer_pool<float> pool;
      op_times t;
      {
        mlp_cuda::stage probe(0, o.hidden, o.rows, 64, s.get(), blas.get(), pool);
        probe.load(mlp_cuda::initial_parameters(0, o.hidden, 1));
        t = measure_ops(probe, s.get(), message, 20);
      }
      s.synchronize();
      std::printf("mlp (h=%d, microbatch-size=%d) per-op ms: F %.4f  B %.4f  W %.4f  F+B %.4f\n",
                  o.hidden, o.rows, t.forward, t.backward, t.weight, t.pair);
      const int hidden = o.hidden, rows_per_mb = o.rows;
      bench_schedules<mlp_cuda::stage, mlp_cuda::mse>(
          o, "mlp", message, t,
          [hidden, rows_per_mb, N](std::deque<mlp_cuda::stage>& st, cudaStream_t stream,
                                   cublasHandle_t h,
                                   cuda::buffer_pool<float>& p) -> mlp_cuda::stage& {
            auto& stage =
                st.emplace_back(static_cast<int>(st.size()), hidden, rows_per_mb, N, stream, h, p);
            stage.load(mlp_cuda::initial_parameters(0, hidden, 1));
            return stage;
          },
          [N](cudaStream_t stream) { return mlp_cuda::mse(stream, N); }, rows);
    }

    std::printf("\n%-5s %-9s %12s %14s %8s %14s\n", "stage", "schedule", "measured ms",
                "simulated ms", "ratio", "summed work ms");
    for (const row& r : rows)
      std::printf("%-5s %-9s %12.3f %14.3f %8.3f %14.3f\n", r.kind.c_str(), r.schedule.c_str(),
                  r.measured, r.predicted, r.measured / r.predicted, r.serial);
    std::puts("ratio = measured / simulated (1.0: the cost model predicts the step exactly).");
    std::puts(
        "summed work = every rank's compute back to back: the bound when ranks share one GPU.");
    return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "pipeline-gpu: %s\n", e.what());
    return 1;
  }
}
