#!/usr/bin/env python3
"""dualpipe-cpp as a Meson subproject of tests/embed/consumer.

Usage: embed_test.py SOURCE_ROOT VERSION MESON NINJA

Copies the consumer into a temporary directory with subprojects/dualpipe-cpp
linked to SOURCE_ROOT, then:
  1. configures it with every option at its default, as C++23 (-std=c++2b:
     Meson 1.0.1's cpp_std has no c++23), and checks that the subproject
     defines no target at all, looks up none of the dependencies of its tests,
     examples, benches or tool (nor CUDA or MPI), answers dependency('dualpipe')
     through its override, and writes a dualpipe.pc without -std;
  2. builds the consumer and runs it: it must print VERSION from the macros of
     dualpipe/version.hpp, a C++23 __cplusplus and a 4-rank DualPipe table;
  3. configures it again with -Ddualpipe-cpp:tests=true (and examples, bench,
     tool), where targets from each of those folders must appear and the
     lookups must happen: without this the checks of step 1 could pass by
     seeing nothing.
The temporary directory is removed however the test ends.
"""

import json
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

PARTS = ("tests", "examples", "bench", "tools")
# What tests, examples, benches and the tool need; a consumer must not be
# asked for any of it.
PART_DEPENDENCIES = ("catch2", "CLI11", "nlohmann_json", "benchmark", "openblas")
PROGRAM_DEPENDENCIES = PART_DEPENDENCIES + ("mpi", "cuda")
STEP_TIMEOUT_S = 150


def run(cmd, **kwargs):
    """Runs cmd; on failure prints its output and exits 1."""
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=STEP_TIMEOUT_S, **kwargs)
    if result.returncode != 0:
        sys.exit(f"FAIL: {' '.join(map(str, cmd))} exited {result.returncode}\n"
                 f"{result.stdout}\n{result.stderr}")
    return result.stdout


def check(condition, message):
    if not condition:
        sys.exit("FAIL: " + message)


def subproject_parts(meson, build):
    """The folders of dualpipe-cpp (tests, tools, ...) that define targets, and
    every target name, from `meson introspect --targets`."""
    targets = json.loads(run([meson, "introspect", "--targets", build]))
    parts = {}
    for t in targets:
        if t.get("subproject") != "dualpipe-cpp":
            continue
        relative = t["defined_in"].split("subprojects/dualpipe-cpp/", 1)[-1]
        folder = relative.split("/")[0] if "/" in relative else "(top)"
        parts.setdefault(folder, []).append(t["name"])
    return parts, [t["name"] for t in targets]


def looked_up(build, names):
    """Which of names the configure log shows a lookup of."""
    log = (Path(build) / "meson-logs" / "meson-log.txt").read_text()
    found = set()
    for name in names:
        if name == "cuda":
            pattern = r"^(Cuda compiler for the host machine|Run-time dependency cuda)"
        else:
            pattern = r"^(Run-time )?[Dd]ependency " + re.escape(name) + r" found"
        if re.search(pattern, log, re.MULTILINE | re.IGNORECASE):
            found.add(name)
    return found, log


def main():
    source_root, version, meson, ninja = sys.argv[1:5]
    with tempfile.TemporaryDirectory(prefix="dualpipe-embed-") as tmp:
        consumer = Path(tmp) / "consumer"
        shutil.copytree(Path(__file__).parent / "consumer", consumer)
        (consumer / "subprojects").mkdir()
        (consumer / "subprojects" / "dualpipe-cpp").symlink_to(Path(source_root).resolve())

        # 1. Defaults: the headers and nothing else.
        build = Path(tmp) / "build"
        run([meson, "setup", build, consumer, "-Dcpp_std=none", "-Dcpp_args=-std=c++2b"])
        parts, names = subproject_parts(meson, build)
        check("embed-consumer" in names,
              f"the consumer's own target is missing from the introspection: {names}")
        check(not parts, f"dualpipe-cpp as a subproject defines targets: {parts}")
        found, log = looked_up(build, PROGRAM_DEPENDENCIES)
        check(not found, f"dualpipe-cpp as a subproject looked up {sorted(found)}")
        check(re.search(r"^Dependency dualpipe found: YES .*\(overridden\)", log, re.MULTILINE),
              "dependency('dualpipe') was not answered by dualpipe-cpp's override")
        pc = (build / "meson-private" / "dualpipe.pc").read_text()
        check("-std" not in pc, f"dualpipe.pc names a language standard:\n{pc}")
        commands = json.loads((build / "compile_commands.json").read_text())
        main_cpp = [c["command"] for c in commands if c["file"].endswith("main.cpp")]
        check(len(main_cpp) == 1 and "-std=c++2b" in main_cpp[0] and "-std=c++20" not in main_cpp[0],
              f"the consumer is not compiled as C++23 alone: {main_cpp}")

        # 2. It builds, and the headers work.
        run([ninja, "-C", build])
        out = run([build / "embed-consumer"])
        major, minor, patch = (int(v) for v in version.split("."))
        expected = f"version {version} ({major * 10000 + minor * 100 + patch})"
        check(expected in out.splitlines(), f"expected '{expected}' from the consumer, got:\n{out}")
        cplusplus = re.search(r"^__cplusplus (\d+)$", out, re.MULTILINE)
        check(cplusplus and int(cplusplus.group(1)) > 202002,
              f"the consumer was not compiled as C++23:\n{out}")
        table = re.search(r"^dualpipe ranks 4 instructions (\d+)$", out, re.MULTILINE)
        check(table and int(table.group(1)) > 0, f"no 4-rank DualPipe table:\n{out}")

        # 3. The twin: with every part turned on, each shows up.
        build_all = Path(tmp) / "build-all"
        run([meson, "setup", build_all, consumer] +
            [f"-Ddualpipe-cpp:{o}=true" for o in ("tests", "examples", "bench", "tool")] +
            [f"-Ddualpipe-cpp:{o}=disabled" for o in ("cuda", "nccl", "mpi")])
        parts, _ = subproject_parts(meson, build_all)
        missing = [p for p in PARTS if p not in parts]
        check(not missing, f"with every part on, no targets from {missing} (found {sorted(parts)})")
        found, _ = looked_up(build_all, PART_DEPENDENCIES)
        check(found == set(PART_DEPENDENCIES),
              f"with every part on, the log shows lookups of only {sorted(found)}")

    print(f"dualpipe-cpp {version} as a subproject: no targets, no lookups, builds as C++23; "
          f"turned on, it defines targets in {', '.join(PARTS)}")


if __name__ == "__main__":
    main()
