#!/usr/bin/env bash
# Runs a command that must fail in a given way, within a time limit:
#
#   expect_fault.sh EXIT PATTERN COMMAND...
#
# EXIT: the exit status it must end with, or "nonzero" for any failure.
# PATTERN: a fixed string its output (stdout and stderr) must contain.
# A command still running after 60 s fails the test as hung: a failed
# pipeline must end every rank, never leave one waiting.
set -uo pipefail
expected=$1
pattern=$2
shift 2
output=$(timeout --kill-after=5 60 "$@" 2>&1)
status=$?
printf '%s\n' "$output"
if [ "$status" -eq 124 ] || [ "$status" -eq 137 ]; then
  echo "expect_fault: the command hung (killed after 60 s)" >&2
  exit 1
fi
if [ "$expected" = nonzero ]; then
  if [ "$status" -eq 0 ]; then
    echo "expect_fault: the command exited 0; expected a failure" >&2
    exit 1
  fi
elif [ "$status" -ne "$expected" ]; then
  echo "expect_fault: the command exited $status; expected $expected" >&2
  exit 1
fi
if ! grep -qF -- "$pattern" <<<"$output"; then
  echo "expect_fault: the output does not say '$pattern'" >&2
  exit 1
fi
