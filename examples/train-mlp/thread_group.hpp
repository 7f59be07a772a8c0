// The few collectives the train-mlp example needs between its ranks, for
// ranks that are threads of one process. mpi_group.hpp has the same members
// for ranks that are processes, so pipeline.hpp and main.cpp are written once
// for both. A rank group member offers:
//
//   rank(), size()
//   barrier()
//   gather(std::span<const T> mine) -> std::vector<std::vector<T>>
//       every rank's values on rank 0 (empty elsewhere)
//   exchange(peer, std::span<const T> send, std::span<T> receive)
//       swaps equal-sized buffers with `peer`; every rank calls it, a rank
//       without a partner passes peer -1
//   reduce_max(std::span<const T> mine) -> std::vector<T>
//       the element-wise maximum over ranks on rank 0 (empty elsewhere)
//   broadcast(T value) -> T
//       rank 0's value on every rank
//
// All of them are collective: every rank of the group calls them in the same
// order. T is int, std::int64_t, float or double. on_rank_threads runs one
// thread per rank. train-torch shares all of it.
#pragma once

#include <algorithm>
#include <barrier>
#include <cstddef>
#include <cstring>
#include <exception>
#include <span>
#include <stdexcept>
#include <string>
#include <thread>
#include <type_traits>
#include <vector>

namespace train_mlp {

// P threads: each rank posts its bytes on a shared board, a barrier makes
// them visible, the readers copy what they need, and a second barrier frees
// the board for the next collective.
class thread_group {
 public:
  explicit thread_group(int size)
      : size_(size), sync_(size), board_(static_cast<std::size_t>(size)) {}
  thread_group(const thread_group&) = delete;
  thread_group& operator=(const thread_group&) = delete;

  // Rank r's side of the group; use it from rank r's thread only.
  class member {
   public:
    member(thread_group& group, int rank) : group_(&group), rank_(rank) {}

    [[nodiscard]] int rank() const noexcept { return rank_; }
    [[nodiscard]] int size() const noexcept { return group_->size_; }

    void barrier() { group_->sync_.arrive_and_wait(); }

    template <class T>
    std::vector<std::vector<T>> gather(std::span<const T> mine) {
      post(mine);
      barrier();
      std::vector<std::vector<T>> all;
      if (rank_ == 0)
        for (int r = 0; r < size(); ++r) all.push_back(read<T>(r));
      barrier();
      return all;
    }

    template <class T>
    void exchange(int peer, std::span<const T> send, std::span<T> receive) {
      post(send);
      barrier();
      const std::vector<std::byte>* theirs =
          peer >= 0 ? &group_->board_[static_cast<std::size_t>(peer)] : nullptr;
      const bool sizes_agree = theirs == nullptr || theirs->size() == receive.size_bytes();
      if (theirs != nullptr && sizes_agree && !theirs->empty())
        std::memcpy(receive.data(), theirs->data(), theirs->size());
      barrier();  // past it, no rank is left waiting for this one
      if (!sizes_agree)
        throw std::logic_error("train_mlp::thread_group: rank " + std::to_string(rank_) +
                               " exchanged " + std::to_string(receive.size_bytes()) +
                               " bytes with rank " + std::to_string(peer) + ", which sent " +
                               std::to_string(theirs->size()));
    }

    template <class T>
    std::vector<T> reduce_max(std::span<const T> mine) {
      const std::vector<std::vector<T>> all = gather(mine);
      std::vector<T> out;
      if (rank_ != 0) return out;
      out.assign(mine.begin(), mine.end());
      for (const std::vector<T>& theirs : all)
        for (std::size_t i = 0; i < out.size() && i < theirs.size(); ++i)
          out[i] = std::max(out[i], theirs[i]);
      return out;
    }

    template <class T>
      requires std::is_trivially_copyable_v<T>
    T broadcast(T value) {
      if (rank_ == 0) post(std::span<const T>(&value, 1));
      barrier();
      std::memcpy(&value, group_->board_[0].data(), sizeof(T));
      barrier();
      return value;
    }

   private:
    template <class T>
    void post(std::span<const T> values) {
      std::vector<std::byte>& slot = group_->board_[static_cast<std::size_t>(rank_)];
      slot.resize(values.size_bytes());  // keeps its capacity from the last time
      if (!values.empty()) std::memcpy(slot.data(), values.data(), values.size_bytes());
    }
    template <class T>
    [[nodiscard]] std::vector<T> read(int r) const {
      const std::vector<std::byte>& slot = group_->board_[static_cast<std::size_t>(r)];
      std::vector<T> out(slot.size() / sizeof(T));
      if (!out.empty()) std::memcpy(out.data(), slot.data(), out.size() * sizeof(T));
      return out;
    }

    thread_group* group_;
    int rank_;
  };

  [[nodiscard]] member at(int rank) { return member(*this, rank); }

 private:
  int size_;
  std::barrier<> sync_;
  std::vector<std::vector<std::byte>> board_;  // one slot per rank
};

// Runs body(r) for r = 0..ranks-1, each on a thread of its own, and returns
// when every one is done; then rethrows the lowest rank's exception, if any.
template <class Body>
void on_rank_threads(int ranks, Body&& body) {
  std::vector<std::exception_ptr> errors(static_cast<std::size_t>(ranks));
  {
    std::vector<std::jthread> threads;
    for (int r = 0; r < ranks; ++r)
      threads.emplace_back([&, r] {
        try {
          body(r);
        } catch (...) {
          errors[static_cast<std::size_t>(r)] = std::current_exception();
        }
      });
  }
  for (const std::exception_ptr& e : errors)
    if (e) std::rethrow_exception(e);
}

}  // namespace train_mlp
