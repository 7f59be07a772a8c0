#!/usr/bin/env python3
"""Runs a train-mlp command with --steps and checks what it promises: exit 0,
and a last line of stdout that is one JSON object with the step times."""
import json
import subprocess
import sys

REQUIRED = {"schedule": str, "ranks": int, "microbatches": int, "hidden": int,
            "microbatch_size": int, "dtype": str, "transport": str, "steps": int,
            "step_ms_median": float, "step_ms_min": float}

run = subprocess.run(sys.argv[1:], stdout=subprocess.PIPE, text=True, timeout=100)
print(run.stdout)
if run.returncode != 0:
    sys.exit(f"last_line_json: the command exited {run.returncode}")
lines = run.stdout.rstrip("\n").split("\n")
try:
    record = json.loads(lines[-1])
except json.JSONDecodeError as e:
    sys.exit(f"last_line_json: the last line is not JSON ({e}): {lines[-1]!r}")
for key, kind in REQUIRED.items():
    if not isinstance(record.get(key), kind):
        sys.exit(f"last_line_json: no {kind.__name__} '{key}' in {record}")
if not 0 < record["step_ms_min"] <= record["step_ms_median"]:
    sys.exit(f"last_line_json: step times out of order in {record}")
