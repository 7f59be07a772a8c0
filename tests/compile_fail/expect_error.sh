#!/usr/bin/env bash
# Compile-fail check: passes only if the compile command FAILS and its
# diagnostics (stderr) contain the expected sentence fragment.
#
#   expect_error.sh FRAGMENT COMPILER [ARGS...]
#
# e.g. expect_error.sh "N >= 2P" c++ -std=c++20 -fsyntax-only -I include case.cpp
# The fragment is matched as fixed text, not a pattern.
set -u
if [ "$#" -lt 2 ]; then
  echo "usage: $0 FRAGMENT COMPILER [ARGS...]" >&2
  exit 2
fi
fragment=$1
shift
if [ -z "$fragment" ]; then
  echo "expect_error.sh: an empty fragment would match any failure" >&2
  exit 2
fi
log=$(mktemp)
trap 'rm -f "$log"' EXIT
if "$@" 2>"$log" >/dev/null; then
  echo "FAIL: this compiled, but it must not:"
  printf ' %q' "$@"
  echo
  exit 1
fi
if grep -qF -- "$fragment" "$log"; then
  echo "ok: compilation failed with: $fragment"
  exit 0
fi
echo "FAIL: compilation failed, but stderr does not contain: $fragment"
echo "--- compiler stderr:"
cat "$log"
exit 1
