#!/usr/bin/env python3
"""Lists the public headers for the standalone-header test.

Usage: list_headers.py INCLUDE_DIR

Prints one line per header under INCLUDE_DIR/dualpipe, sorted:
    <path relative to INCLUDE_DIR> TAB <needs>
where <needs> is a comma-separated subset of cuda, nccl, mpi, torch, or '-'.

A header needs a dependency if its path says so (a cuda/ or torch/ folder,
or cuda, nccl or mpi in its path: the project's rule) or if it includes that
dependency's headers (cuda_runtime.h, cublas_v2.h, nccl.h, mpi.h, ...),
directly or through another dualpipe header: a header whose name does not
follow the rule is still only compiled when its dependency is enabled.
"""
import os
import re
import sys

NEEDS = ("cuda", "nccl", "mpi", "torch")
# System headers that belong to each dependency.
SYSTEM = {
    "cuda": re.compile(r"^(cuda|cublas|cuda_runtime|cufft|curand|cusparse|nvtx|thrust/|cub/)"),
    "nccl": re.compile(r"^nccl"),
    "mpi": re.compile(r"^mpi"),
    "torch": re.compile(r"^(torch/|ATen/|c10/)"),
}
INCLUDE = re.compile(r'^\s*#\s*include\s*[<"]([^>"]+)[>"]', re.MULTILINE)


def path_needs(rel):
    needs = set()
    inner = rel.split("/", 1)[1] if "/" in rel else rel
    if "cuda" in inner:
        needs.add("cuda")
    if "nccl" in inner:
        needs.update(("nccl", "cuda"))  # NCCL moves CUDA device buffers
    # 'mpi' as a word: compile_time.hpp must not count.
    if re.search(r"(^|[^a-z])mpi([^a-z]|$)", inner):
        needs.add("mpi")
    if rel.startswith("dualpipe/torch/"):
        needs.add("torch")
    return needs


def main():
    include_dir = sys.argv[1]
    headers = {}
    for folder, _, names in os.walk(os.path.join(include_dir, "dualpipe")):
        for name in names:
            if name.endswith((".hpp", ".h")):
                full = os.path.join(folder, name)
                rel = os.path.relpath(full, include_dir).replace(os.sep, "/")
                with open(full, encoding="utf-8", errors="replace") as f:
                    headers[rel] = INCLUDE.findall(f.read())
    needs = {rel: path_needs(rel) for rel in headers}
    for rel, includes in headers.items():
        for inc in includes:
            for dep, pattern in SYSTEM.items():
                if pattern.match(inc):
                    needs[rel].add(dep)
                    if dep == "nccl":
                        needs[rel].add("cuda")
    # Through other dualpipe headers, until nothing changes.
    changed = True
    while changed:
        changed = False
        for rel, includes in headers.items():
            for inc in includes:
                if inc in needs and not needs[inc] <= needs[rel]:
                    needs[rel] |= needs[inc]
                    changed = True
    for rel in sorted(headers):
        print(rel + "\t" + (",".join(n for n in NEEDS if n in needs[rel]) or "-"))


if __name__ == "__main__":
    main()
