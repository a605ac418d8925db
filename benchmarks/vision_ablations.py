"""Which eyes the tiny Flamingo needs: the vision-encoder ablations, recorded in benchmarks/results/vision_ablations.json.

    python benchmarks/vision_ablations.py                       # every variant, seeds 0 1 2, one process
    python benchmarks/vision_ablations.py --seeds 0 --budgets 800

Each run is `flamingo_lite.tiny.training.run_training` with the default setup, changing only the vision encoder
(`FlamingoConfig(vision=..., vision_frozen=...)`): the contrastively pretrained encoder, frozen (the default, the
paper's recipe); the hand-made one (fixed edge filters and a fixed random mix); the same convolutional architecture
frozen at its random initialisation; that architecture trained from its random initialisation together with
Flamingo; and the pretrained encoder fine-tuned together with Flamingo. Two training budgets: the default 800
Flamingo steps and a short one (150 steps), where an encoder that makes the task easier shows up first.
Recorded per variant, budget and seed: held-out caption accuracy (right colour and shape), exact accuracy, the
held-out text loss of Flamingo (lower is better; it still separates variants when every accuracy is near 1) and
the seconds (one thread, on a machine shared with other jobs). The paper's direction: Table 3 (vii) of Alayrac et
al. 2022, overall score of Flamingo-3B, NFNet-F6 (contrastive, the paper's) 70.7, CLIP ViT-L/14 64.9, NFNet-F0 62.7.
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch

from flamingo_lite.files import RunOutputs
from flamingo_lite.options import check_outputs, positive_int, seed_int

VARIANTS = {
    "pretrained, frozen (default)": {"vision": "pretrained"},
    "hand-made, frozen": {"vision": "handmade"},
    "random conv, frozen": {"vision": "random"},
    "conv trained with Flamingo (from random init)": {"vision": "random", "vision_frozen": False},
    "pretrained, fine-tuned with Flamingo": {"vision": "pretrained", "vision_frozen": False},
}
PAPER_TABLE_3_VII = {"NFNet-F6 (contrastive, the paper's)": 70.7, "CLIP ViT-L/14": 64.9, "NFNet-F0": 62.7}
DEFAULT_OUT = Path(__file__).parent / "results" / "vision_ablations.json"


def run_one(name: str, seed: int, steps: int) -> dict:
    from flamingo_lite.tiny.model import FlamingoConfig
    from flamingo_lite.tiny.training import TrainingSetup, run_training

    model, h = run_training(TrainingSetup(seed=seed, steps=steps), FlamingoConfig(**VARIANTS[name]), progress=False)
    return {
        "variant": name,
        "seed": seed,
        "steps": steps,
        "heldout_caption_accuracy": h["heldout_caption_accuracy"],
        "heldout_exact_accuracy": h["heldout_exact_accuracy"],
        "heldout_flamingo_text_loss": h["heldout_flamingo_text_loss"],
        "heldout_lm_text_loss": h["heldout_lm_text_loss"],
        "trainable_vision_parameters": model.parameter_counts()["parts"]["vision"]["trainable"],
        "seconds": h["seconds"],
    }


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=seed_int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--budgets", type=positive_int, nargs="+", default=[150, 800], help="Flamingo training steps (default 150 800)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    check_outputs(parser, {"--out": args.out})  # before many minutes of training: exit status 2
    torch.set_num_threads(1)  # one heavy job on a shared machine; the lessons' setting
    start = time.perf_counter()
    runs = []
    for steps in args.budgets:
        for seed in args.seeds:
            for name in VARIANTS:
                runs.append(run_one(name, seed, steps))
                r = runs[-1]
                print(f"{steps:4d} steps  seed {seed}  {name:46s} caption {r['heldout_caption_accuracy']:.3f}  "
                      f"exact {r['heldout_exact_accuracy']:.3f}  text loss {r['heldout_flamingo_text_loss']:.4f}  {r['seconds']:.0f} s", flush=True)
    summary = {}
    for steps in args.budgets:
        for name in VARIANTS:
            mine = [r for r in runs if r["variant"] == name and r["steps"] == steps]
            summary[f"{name} @ {steps} steps"] = {
                "mean_heldout_caption_accuracy": sum(r["heldout_caption_accuracy"] for r in mine) / len(mine),
                "min_heldout_caption_accuracy": min(r["heldout_caption_accuracy"] for r in mine),
                "mean_heldout_exact_accuracy": sum(r["heldout_exact_accuracy"] for r in mine) / len(mine),
                "mean_heldout_text_loss": sum(r["heldout_flamingo_text_loss"] for r in mine) / len(mine),
                "seeds": [r["seed"] for r in mine],
            }
    record = {
        "command": "python benchmarks/vision_ablations.py --seeds " + " ".join(map(str, args.seeds))
        + " --budgets " + " ".join(map(str, args.budgets)),
        "machine": f"{platform.machine()}, 1 torch thread, shared with other jobs",
        "torch": torch.__version__,
        "paper_table_3_vii_overall_score": PAPER_TABLE_3_VII,
        "total_seconds": time.perf_counter() - start,
        "summary": summary,
        "runs": runs,
    }
    outputs = RunOutputs()
    outputs.write("--out", args.out, json.dumps(record, indent=1))
    for key, s in summary.items():
        print(f"{key:62s} caption {s['mean_heldout_caption_accuracy']:.3f} (min {s['min_heldout_caption_accuracy']:.3f})  "
              f"exact {s['mean_heldout_exact_accuracy']:.3f}  text loss {s['mean_heldout_text_loss']:.4f}")
    return outputs.exit_code()


if __name__ == "__main__":
    sys.exit(main())
