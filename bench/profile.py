"""Summarize py-spy's collapsed stacks: ``python -m bench.profile FILE [N]``.

Prints the functions with the most samples, self time and inclusive time, so
docs/benchmarks.md can say what limits each number.
"""

from __future__ import annotations

import sys
from collections import Counter


def summarize(path: str, top: int = 25) -> str:
    own: Counter[str] = Counter()
    incl: Counter[str] = Counter()
    total = 0
    for line in open(path):
        stack, _, count = line.rstrip().rpartition(" ")
        if not stack:
            continue
        n = int(count)
        total += n
        frames = [f.split(" (")[0] + " (" + f.split(" (")[1].split(":")[0].rsplit("/", 1)[-1] + ")" if " (" in f else f
                  for f in stack.split(";")]
        own[frames[-1]] += n
        for f in set(frames):
            incl[f] += n
    out = [f"{total} samples", "", "self %   function"]
    out += [f"{100 * n / total:5.1f}   {f}" for f, n in own.most_common(top)]
    out += ["", "incl %   function"]
    out += [f"{100 * n / total:5.1f}   {f}" for f, n in incl.most_common(top)]
    return "\n".join(out)


if __name__ == "__main__":
    print(summarize(sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 25))
