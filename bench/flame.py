"""Summarise a ``py-spy record --format raw`` file: top self and inclusive frames.

python -m bench.flame FILE [--top N] [--match SUBSTR]
"""

from __future__ import annotations

import argparse
from collections import Counter


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("file")
    ap.add_argument("--top", type=int, default=25)
    ap.add_argument("--match", default="")
    args = ap.parse_args()
    self_c: Counter[str] = Counter()
    incl: Counter[str] = Counter()
    total = 0
    for line in open(args.file):
        stack, _, n = line.rstrip().rpartition(" ")
        if not stack:
            continue
        count = int(n)
        frames = stack.split(";")
        if args.match and not any(args.match in f for f in frames):
            continue
        total += count
        self_c[frames[-1]] += count
        for f in set(frames):
            incl[f] += count
    print(f"samples: {total}")
    print("-- self")
    for f, c in self_c.most_common(args.top):
        print(f"{100 * c / total:5.1f}%  {f}")
    print("-- inclusive")
    for f, c in incl.most_common(args.top * 2):
        print(f"{100 * c / total:5.1f}%  {f}")


if __name__ == "__main__":
    main()
