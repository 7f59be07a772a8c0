#!/usr/bin/env python3
"""Runs moe-overlap with --steps (and --pair-timeline FILE) and checks what it
promises: exit 0; a last line of stdout that is one JSON object with the step
times of both modes, the share of communication hidden (0..1) and the median
pair measured and predicted; and a pair-timeline file in the interchange
format of dualpipe/io/pair_timeline.hpp, one sub-op per entry of every
layer of both programs."""
import json
import subprocess
import sys

REQUIRED = {"schedule": str, "ranks": int, "experts": int, "microbatches": int, "layers": int,
            "tokens": int, "hidden": int, "dtype": str, "steps": int,
            "link_us_per_kib": (int, float), "link_latency_us": (int, float),
            "step_ms_overlapped": float, "step_ms_sequential": float,
            "comm_hidden_fraction": float, "pair_ms_measured": float,
            "pair_ms_predicted": float, "pairs_measured": int}

command = sys.argv[1:]
run = subprocess.run(command, stdout=subprocess.PIPE, text=True, timeout=100)
print(run.stdout)
if run.returncode != 0:
    sys.exit(f"steps_json: the command exited {run.returncode}")
record = json.loads(run.stdout.rstrip("\n").split("\n")[-1])
for key, kind in REQUIRED.items():
    if not isinstance(record.get(key), kind):
        sys.exit(f"steps_json: no {kind} '{key}' in {record}")
if not (record["step_ms_overlapped"] > 0 and record["step_ms_sequential"] > 0):
    sys.exit(f"steps_json: step times must be positive: {record}")
if not 0.0 <= record["comm_hidden_fraction"] <= 1.0:
    sys.exit(f"steps_json: comm_hidden_fraction outside 0..1: {record}")
if record["pairs_measured"] < 1 or not (record["pair_ms_measured"] > 0 and
                                        record["pair_ms_predicted"] > 0):
    sys.exit(f"steps_json: no overlapped pair measured: {record}")

if "--pair-timeline" in command:
    path = command[command.index("--pair-timeline") + 1]
    with open(path) as f:
        pair = json.load(f)
    programs = pair["programs"]
    layers = programs["layers"]
    if layers != record["layers"]:
        sys.exit(f"steps_json: the timeline has {layers} layers, the run {record['layers']}")
    names = {"F": [op["name"] for op in programs["forward"]],
             "B": [op["name"] for op in programs["backward"]]}
    if names != {"F": ["attn", "dispatch", "mlp", "combine"],
                 "B": ["combine", "mlp", "mlp.W", "dispatch", "attn", "attn.W"]}:
        sys.exit(f"steps_json: not the MoE layer's programs: {names}")
    if pair["unit"] != "us":
        sys.exit(f"steps_json: unit {pair['unit']!r}, expected 'us'")
    seen = set()
    for op in pair["sub_ops"]:
        lane = (programs["forward"] if op["pass"] == "F" else programs["backward"])[op["index"]]["lane"]
        if op["lane"] != lane or not 0 <= op["start"] <= op["end"]:
            sys.exit(f"steps_json: bad sub-op entry {op}")
        seen.add((op["pass"], op["layer"], op["index"]))
    if len(seen) != len(pair["sub_ops"]) or len(seen) != 10 * layers:
        sys.exit(f"steps_json: {len(pair['sub_ops'])} sub-ops, expected each of {10 * layers} once")
    for key in ("forward_microbatch", "backward_microbatch"):
        if not 0 <= pair[key] < record["microbatches"]:
            sys.exit(f"steps_json: {key} {pair[key]} is no micro-batch")
print("steps_json: ok")
