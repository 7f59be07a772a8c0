// PyTorch torch.distributed.pipelining action syntax: "3F0", "2I5",
// "(0F4;7B1)OVERLAP_F_B", "1SEND_F3". Formatting and parsing, constexpr.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include "dualpipe/schedule/instruction.hpp"

namespace dualpipe {

namespace detail {

constexpr void append_int(std::string& out, std::int64_t v) {
  if (v < 0) {
    out.push_back('-');
    v = -v;
  }
  char digits[20]{};
  int n = 0;
  do {
    digits[n++] = static_cast<char>('0' + v % 10);
    v /= 10;
  } while (v != 0);
  while (n > 0) out.push_back(digits[--n]);
}

// Parses a non-negative decimal at s[pos...]; advances pos. nullopt if none
// or if it overflows 31 bits.
constexpr std::optional<std::int32_t> parse_uint(std::string_view s, std::size_t& pos) {
  const std::size_t start = pos;
  std::int64_t v = 0;
  while (pos < s.size() && s[pos] >= '0' && s[pos] <= '9') {
    v = v * 10 + (s[pos] - '0');
    if (v > 0x7FFF'FFFF) return std::nullopt;
    ++pos;
  }
  if (pos == start) return std::nullopt;
  return static_cast<std::int32_t>(v);
}

}  // namespace detail

// "3F0"-style text of one instruction. A commit prints as "COMMIT", which is
// this library's extension (PyTorch has no batch boundary).
[[nodiscard]] constexpr std::string format_action(const instruction& i) {
  std::string out;
  if (i.kind == op::commit) return std::string(op_name(op::commit));
  if (i.kind == op::overlapped_forward_backward) {
    out.push_back('(');
    detail::append_int(out, i.stage);
    out += 'F';
    detail::append_int(out, i.microbatch);
    out.push_back(';');
    detail::append_int(out, i.stage_b);
    out += 'B';
    detail::append_int(out, i.microbatch_b);
    out += ")OVERLAP_F_B";
    return out;
  }
  detail::append_int(out, i.stage);
  out += op_name(i.kind);
  detail::append_int(out, i.microbatch);
  return out;
}

// Why a piece of action text did not parse, and at which character.
struct action_parse_error {
  std::size_t column = 0;  // 0-based offset into the text
  std::string_view message;
};

struct action_parse_result {
  std::optional<instruction> action;
  action_parse_error error{};
  [[nodiscard]] constexpr explicit operator bool() const noexcept { return action.has_value(); }
};

namespace detail {

constexpr action_parse_result parse_simple(std::string_view s, std::size_t& pos) {
  const std::size_t start = pos;
  const auto stage = parse_uint(s, pos);
  if (!stage) return {std::nullopt, {start, "expected a stage number"}};
  // Longest kind names first: "SEND_F" must not be read as "S..." prefix of something else.
  constexpr op kinds[] = {op::send_forward, op::recv_forward, op::send_backward, op::recv_backward,
                          op::forward,      op::backward,     op::backward_input, op::backward_weight};
  for (op k : kinds) {
    const std::string_view name = op_name(k);
    if (s.substr(pos, name.size()) == name) {
      pos += name.size();
      const auto mb = parse_uint(s, pos);
      if (!mb) return {std::nullopt, {pos, "expected a micro-batch number"}};
      return {instruction{k, *stage, *mb, -1, -1, -1}, {}};
    }
  }
  return {std::nullopt,
          {pos, "expected an action kind (F, B, I, W, SEND_F, RECV_F, SEND_B, RECV_B)"}};
}

}  // namespace detail

// Parses one whole action. Surrounding blanks are not accepted: trim first.
[[nodiscard]] constexpr action_parse_result parse_action(std::string_view s) {
  std::size_t pos = 0;
  if (s == op_name(op::commit)) return {make_commit(), {}};
  if (s.empty()) return {std::nullopt, {0, "empty action"}};
  if (s[0] == '(') {
    pos = 1;
    auto first = detail::parse_simple(s, pos);
    if (!first) return first;
    if (first.action->kind != op::forward)
      return {std::nullopt, {1, "an overlapped pair starts with a forward (sF m)"}};
    if (pos >= s.size() || s[pos] != ';')
      return {std::nullopt, {pos, "expected ';' between the two halves of an overlapped pair"}};
    const std::size_t second_at = ++pos;
    auto second = detail::parse_simple(s, pos);
    if (!second) return second;
    if (second.action->kind != op::backward)
      return {std::nullopt,
              {second_at, "the second half of an overlapped pair is a full backward (sB m)"}};
    constexpr std::string_view tail = ")OVERLAP_F_B";
    if (s.substr(pos) != tail) return {std::nullopt, {pos, "expected ')OVERLAP_F_B'"}};
    return {make_overlapped(first.action->stage, first.action->microbatch, second.action->stage,
                            second.action->microbatch),
            {}};
  }
  auto r = detail::parse_simple(s, pos);
  if (!r) return r;
  if (pos != s.size()) return {std::nullopt, {pos, "unexpected text after the action"}};
  return r;
}

}  // namespace dualpipe
