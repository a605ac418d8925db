#!/usr/bin/env python3
"""Tokens per second of the tiny Flamingo's generation, with and without the cache, in one process.

    python benchmarks/generation.py                       # CPU, one thread: about a minute
    python benchmarks/generation.py --threads 2 --repeats 5

The task: a prompt of 5 pictures, each `<image> a <colour> <shape> <eoc>` (25 tokens), then 100 new tokens by
greedy search (`eoc_id=None`, so every run writes exactly 100). "Without the cache" re-runs `Flamingo.forward` on
the whole sequence, pictures included, for every token; "with the cache" encodes the pictures once and keeps the
language model's keys and values (`flamingo_lite.tiny.generation`). Both write the same tokens (checked here).
The runs alternate, `--repeats` times each, and the median wall time of each is reported with the ratio. The model
has the tiny Flamingo's default sizes with `max_len=128` and random weights: speed does not depend on training.
Results go to benchmarks/results/generation_cpu.json (written atomically).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from flamingo_lite.files import RunOutputs  # noqa: E402
from flamingo_lite.options import check_outputs, positive_int  # noqa: E402
from flamingo_lite.tiny.data import Tokenizer  # noqa: E402
from flamingo_lite.tiny.generation import generate  # noqa: E402
from flamingo_lite.tiny.model import Flamingo, FlamingoConfig  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=positive_int, default=1)
    parser.add_argument("--repeats", type=positive_int, default=3)
    parser.add_argument("--new-tokens", type=positive_int, default=100)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "generation_cpu.json"))
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    check_outputs(parser, {"--out": args.out})  # before the timing: exit status 2
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    tok = Tokenizer()
    prompt_words = []
    for colour, shape in [("red", "circle"), ("blue", "square"), ("green", "triangle"), ("red", "square"), ("blue", "circle")]:
        prompt_words += ["<image>", "a", colour, shape, "<eoc>"]
    ids = [tok.index[w] for w in prompt_words]
    tokens = torch.tensor([ids])  # (1, 25)
    images = torch.rand(1, 5, 3, 16, 16)  # (1, 5, 3, H, W)
    model = Flamingo(FlamingoConfig(vocab_size=len(tok.vocab), max_len=tokens.shape[1] + args.new_tokens + 3)).eval()
    with torch.no_grad():
        for block in model.xattn.values():  # open gates, so the pictures take part as in a trained model
            block.attn_gate.fill_(0.5)
            block.ff_gate.fill_(0.5)

    def run(use_cache: bool):
        start = time.perf_counter()
        out = generate(model, tokens, images, max_new_tokens=args.new_tokens, eoc_id=None, use_cache=use_cache)
        return time.perf_counter() - start, out

    run(True), run(False)  # warm-up
    times = {"cached": [], "uncached": []}
    outputs = {}
    for r in range(args.repeats):
        for name in (("cached", "uncached") if r % 2 == 0 else ("uncached", "cached")):
            seconds, outputs[name] = run(name == "cached")
            times[name].append(seconds)
    if not torch.equal(outputs["cached"], outputs["uncached"]):
        raise SystemExit("cached and uncached generation wrote different tokens")

    median = {name: statistics.median(ts) for name, ts in times.items()}
    result = {
        "task": f"{args.new_tokens} new tokens (greedy) after a 5-picture prompt of {tokens.shape[1]} tokens",
        "tokens_per_second": {name: round(args.new_tokens / s, 1) for name, s in median.items()},
        "median_seconds": {name: round(s, 4) for name, s in median.items()},
        "speedup": round(median["uncached"] / median["cached"], 2),
        "repeats": args.repeats,
        "threads": args.threads,
        "torch": torch.__version__,
        "machine": {"processor": platform.processor() or platform.machine(), "cpus": os.cpu_count()},
    }
    outputs = RunOutputs()
    if outputs.write("--out", args.out, json.dumps(result, indent=2) + "\n"):
        print(json.dumps(result, indent=2))
    return outputs.exit_code()


if __name__ == "__main__":
    sys.exit(main())
