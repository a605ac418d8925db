"""The paper's three ablations on the tiny Flamingo, recorded for lesson 09.

    python benchmarks/ablations.py                  # every variant, seeds 0 1 2, two processes
    python benchmarks/ablations.py --seeds 0 --workers 1

Each run is `flamingo_lite.tiny.training.run_training` with the default setup, changing one thing (paper, Table 3):
only the immediate picture vs all previous pictures, tanh gating vs gates fixed open, a gated block before every
LM layer vs every 2nd. Results go to benchmarks/ablations.json: per variant and seed the held-out caption
accuracy, the final tanh(gates), the held-out text loss and the seconds (on a shared machine, inflated by
load; each process uses one thread).
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from multiprocessing import get_context
from pathlib import Path

import torch

from flamingo_lite.files import RunOutputs
from flamingo_lite.options import check_outputs, positive_int, seed_int

VARIANTS = {
    "flamingo (immediate media, tanh gates, every layer)": {},
    "all previous media": {"only_attend_immediate_media": False},
    "no tanh gating (gates fixed open)": {"tanh_gate": False},
    "cross-attention every 2nd layer": {"cross_attn_every": 2},
}
PAPER = {  # overall score, Table 3 of Alayrac et al. 2022
    "flamingo (immediate media, tanh gates, every layer)": 70.7,
    "all previous media": 63.5,
    "no tanh gating (gates fixed open)": 66.5,
    "cross-attention every 2nd layer": 68.2,
}


def run_one(job):
    name, seed = job
    torch.set_num_threads(1)
    from flamingo_lite.tiny.model import FlamingoConfig
    from flamingo_lite.tiny.training import TrainingSetup, run_training

    _, h = run_training(TrainingSetup(seed=seed), FlamingoConfig(**VARIANTS[name]), progress=False)
    return {
        "variant": name,
        "seed": seed,
        "heldout_caption_accuracy": h["heldout_caption_accuracy"],
        "heldout_format_accuracy": h["heldout_format_accuracy"],
        "heldout_flamingo_text_loss": h["heldout_flamingo_text_loss"],
        "heldout_lm_text_loss": h["heldout_lm_text_loss"],
        "final_attn_gate_tanh": h["attn_gate_tanh"][-1],
        "final_ff_gate_tanh": h["ff_gate_tanh"][-1],
        "loss_at_step_0": h["loss"][0],
        "seconds": h["seconds"],
    }


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=seed_int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--workers", type=positive_int, default=2)
    parser.add_argument("--out", type=Path, default=Path(__file__).with_name("ablations.json"))
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    check_outputs(parser, {"--out": args.out})  # before minutes of training: exit status 2
    jobs = [(name, seed) for seed in args.seeds for name in VARIANTS]
    start = time.perf_counter()
    with get_context("spawn").Pool(args.workers) as pool:
        runs = pool.map(run_one, jobs, chunksize=1)
    summary = {}
    for name in VARIANTS:
        mine = [r for r in runs if r["variant"] == name]
        summary[name] = {
            "paper_overall_score": PAPER[name],
            "mean_heldout_caption_accuracy": sum(r["heldout_caption_accuracy"] for r in mine) / len(mine),
            "min_heldout_caption_accuracy": min(r["heldout_caption_accuracy"] for r in mine),
            "max_heldout_caption_accuracy": max(r["heldout_caption_accuracy"] for r in mine),
            "mean_heldout_text_loss": sum(r["heldout_flamingo_text_loss"] for r in mine) / len(mine),
            "seeds": [r["seed"] for r in mine],
        }
    record = {
        "command": "python benchmarks/ablations.py " + " ".join(["--seeds", *map(str, args.seeds), "--workers", str(args.workers)]),
        "machine": f"{platform.machine()}, {torch.get_num_threads()} torch threads available, shared with other jobs",
        "torch": torch.__version__,
        "total_seconds": time.perf_counter() - start,
        "summary": summary,
        "runs": runs,
    }
    outputs = RunOutputs()
    outputs.write("--out", args.out, json.dumps(record, indent=1))
    for name, s in summary.items():
        print(f"{name:55s} paper {s['paper_overall_score']:5.1f}   toy accuracy {s['mean_heldout_caption_accuracy']:.3f} "
              f"(min {s['min_heldout_caption_accuracy']:.3f}, max {s['max_heldout_caption_accuracy']:.3f})")
    return outputs.exit_code()


if __name__ == "__main__":
    sys.exit(main())
