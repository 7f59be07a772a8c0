// The moe-overlap example's threads: P pipeline ranks x E replicas, all in
// this process. Replica e is a whole pipeline on its own in-process network
// of P ranks; at pipeline rank p the E threads (p, 0..E-1) form the expert
// group that exchanges tokens. World rank e * P + p names a thread, so
// replica 0's ranks are world ranks 0..P-1.
//
// A failure anywhere ends every thread: abort() stops every pipeline network
// (as the failing rank), every expert group and the world's own barrier, so
// a thread blocked in any of them wakes and throws.
#pragma once

#include <chrono>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "abortable_barrier.hpp"
#include "dualpipe/transport/in_process.hpp"
#include "expert_exchange.hpp"

namespace moe_overlap {

template <class Real>
class world {
 public:
  using network_type = dualpipe::in_process_network<tensor<Real>>;

  // `timeout`: of the pipeline transports and the world's barrier;
  // `exchange_timeout`: of the expert groups.
  world(int pipeline_ranks, int members, std::chrono::nanoseconds timeout,
        std::chrono::nanoseconds exchange_timeout, std::chrono::nanoseconds spin,
        wire_emulation wire)
      : P_(pipeline_ranks),
        E_(members),
        barrier_("the world's " + std::to_string(pipeline_ranks * members) + " threads",
                 pipeline_ranks * members, timeout) {
    for (int e = 0; e < members; ++e)
      networks_.push_back(std::make_unique<network_type>(pipeline_ranks, timeout, spin));
    for (int p = 0; p < pipeline_ranks; ++p)
      exchanges_.push_back(
          std::make_unique<expert_exchange<Real>>(p, members, exchange_timeout, wire));
  }

  [[nodiscard]] int pipeline_ranks() const noexcept { return P_; }
  [[nodiscard]] int members() const noexcept { return E_; }
  [[nodiscard]] int size() const noexcept { return P_ * E_; }
  [[nodiscard]] int world_rank(int pipeline_rank, int replica) const noexcept {
    return replica * P_ + pipeline_rank;
  }

  [[nodiscard]] network_type& network(int replica) {
    return *networks_.at(static_cast<std::size_t>(replica));
  }
  [[nodiscard]] expert_exchange<Real>& exchange(int pipeline_rank) {
    return *exchanges_.at(static_cast<std::size_t>(pipeline_rank));
  }

  // All P x E threads; throws group_aborted once any of them failed.
  void barrier(int world_rank, std::string_view where) {
    barrier_.arrive_and_wait(world_rank, where);
  }

  // Stops everything, for `world_rank`'s failure `why`. Any thread, any time.
  void abort(int world_rank, std::string_view why) noexcept {
    const int p = world_rank % P_;
    for (auto& n : networks_) n->endpoint(p).abort(why);
    for (auto& x : exchanges_) x->abort(why);
    barrier_.abort(why);
  }

 private:
  int P_, E_;
  std::vector<std::unique_ptr<network_type>> networks_;            // per replica
  std::vector<std::unique_ptr<expert_exchange<Real>>> exchanges_;  // per pipeline rank
  abortable_barrier barrier_;
};

}  // namespace moe_overlap
