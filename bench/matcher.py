"""Latency of the built-in intent matcher at 50 synthetic intents (goal: p99 < 1 ms per turn).

Run: ``python bench/matcher.py [--quick]``. Also importable: ``run(quick) -> dict``.
Each synthetic intent has 12 example phrases drawn from a shared vocabulary
(so intents overlap, like real bots) plus a few intent-specific words; queries
are unseen recombinations. Prints p50/p99/mean in microseconds and the rate.
"""

from __future__ import annotations

import argparse
import gc
import json
import random
import statistics
import time
from typing import Any

from talkwire.server.dialogue.matcher import IntentSpec, NGramMatcher

COMMON = [
    "my",
    "the",
    "please",
    "can",
    "you",
    "i",
    "want",
    "to",
    "check",
    "show",
    "what",
    "is",
    "where",
    "how",
    "much",
    "when",
    "will",
    "order",
    "account",
    "ticket",
    "balance",
    "status",
    "help",
    "need",
    "a",
    "an",
    "of",
    "for",
    "with",
    "on",
    "about",
    "get",
    "find",
    "update",
    "change",
    "cancel",
]


def _word(rng: random.Random) -> str:
    return "".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(4, 9)))


def build(
    n_intents: int = 50, n_examples: int = 12, seed: int = 7
) -> tuple[NGramMatcher, list[str]]:
    rng = random.Random(seed)
    specs: list[IntentSpec] = []
    queries: list[str] = []
    for i in range(n_intents):
        own = [_word(rng) for _ in range(6)]
        examples = []
        for _ in range(n_examples + 4):
            words = rng.sample(COMMON, rng.randint(2, 5)) + rng.sample(own, rng.randint(1, 3))
            rng.shuffle(words)
            if rng.random() < 0.3:
                words.append(str(rng.randint(1, 99999)))
            examples.append(" ".join(words))
        specs.append(IntentSpec(f"intent_{i}", tuple(examples[:n_examples])))
        queries.extend(examples[n_examples:])
    rng.shuffle(queries)
    return NGramMatcher(specs), queries


def run(quick: bool = False) -> dict[str, Any]:
    build_start = time.perf_counter()
    matcher, queries = build()
    build_ms = (time.perf_counter() - build_start) * 1000
    rounds = 5 if quick else 25
    # the matcher is long-lived: move it out of the cyclic GC's generations, as a server
    # process would after loading its bots (gc.freeze), so p99 measures matching, not GC
    gc.collect()
    gc.freeze()
    for q in queries[:50]:  # warm-up
        matcher.match(q)
    samples: list[float] = []
    correct = 0
    for _ in range(rounds):
        for q in queries:
            t0 = time.perf_counter_ns()
            result = matcher.match(q)
            samples.append((time.perf_counter_ns() - t0) / 1000)
            correct += result.intent is not None
    gc.unfreeze()
    samples.sort()
    p50 = samples[len(samples) // 2]
    p99 = samples[min(len(samples) - 1, int(len(samples) * 0.99))]
    return {
        "intents": 50,
        "turns": len(samples),
        "build_ms": round(build_ms, 2),
        "p50_us": round(p50, 1),
        "p99_us": round(p99, 1),
        "mean_us": round(statistics.fmean(samples), 1),
        "turns_per_s": round(1e6 / statistics.fmean(samples)),
        "matched_fraction": round(correct / len(samples), 3),
        "goal_p99_under_1ms": p99 < 1000,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer rounds")
    args = parser.parse_args()
    print(json.dumps(run(args.quick), indent=2))


if __name__ == "__main__":
    main()
