"""The shots curve of the tiny Flamingo (issue 12) and its comparisons, over seeds.

    python benchmarks/fewshot.py                      # default + comparisons, seeds 0 1 2
    python benchmarks/fewshot.py --seeds 0 --configs default

For each seed the language model is trained once on text alone (inside the default run, whose time is both
stages); the comparisons reuse a copy of it. Configs: `default` (no per-image embedding, immediate media, frozen
LM), `per_media` (flamingo-pytorch's per-image embedding: no prompt past 5 pictures), `all_previous` (text sees every
earlier picture), `unfrozen_lm` (the LM trains along; its text-task accuracy before and after), `handmade_vision`
(lesson 08's fixed, hand-made encoder instead of the contrastively pretrained one). The text-only LM
(blind) is evaluated inside every run. Writes benchmarks/results/fewshot.json after every run (atomically), the
table benchmarks/FEWSHOT.md and the picture benchmarks/fewshot_curve.png.
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT.parent))

from flamingo_lite.files import write_figure_atomic, write_text_atomic  # noqa: E402
from flamingo_lite.tiny.fewshot import FewShotSetup, load_model, run_fewshot, save_model  # noqa: E402

CONFIGS = {
    "default": {},
    "per_media": {"media_embedding": "per_media"},
    "all_previous": {"only_attend_immediate_media": False},
    "unfrozen_lm": {"freeze_lm": False},
    "handmade_vision": {"vision": "handmade"},
}
KEEP = ("shots_curve", "shots_curve_generation", "in_support_accuracy", "in_support_fraction", "rices_curve", "text_only_lm_curve",
        "chance", "lm_text_accuracy_before", "lm_text_accuracy_after", "lm_seconds", "train_seconds", "seconds", "attn_gate_tanh", "step")


def write_json(path: Path, data) -> None:
    write_text_atomic(path, json.dumps(data, indent=1))


def fmt(v) -> str:
    return "-" if v is None else f"{v:.2f}"


def write_table(results: dict, path: Path) -> None:
    lines = ["# The shots curve (issue 12)", "",
             "Made by `python benchmarks/fewshot.py`; the numbers are in `results/fewshot.json`. Accuracy (likelihood "
             "scoring of the 16 names) on held-out episodes against the number k of support pictures; chance is 1/16 = 0.06. "
             "`in support`: accuracy on the episodes whose query class is among the support pictures.", "",
             f"Machine: {results['machine']}", ""]
    ks = sorted({k for runs in results["runs"].values() for h in runs.values() for k in h["shots_curve"]}, key=int)
    lines += ["| config | seed | curve | " + " | ".join(f"k={k}" for k in ks) + " |", "|---|---|---|" + "---|" * len(ks)]
    for name, runs in results["runs"].items():
        for seed, h in runs.items():
            for label, key in (("overall", "shots_curve"), ("in support", "in_support_accuracy"), ("RICES", "rices_curve"),
                               ("text-only LM", "text_only_lm_curve"), ("greedy", "shots_curve_generation")):
                row = h.get(key, {})
                lines.append(f"| {name} | {seed} | {label} | " + " | ".join(fmt(row.get(k)) for k in ks) + " |")
    lines += ["", "| config | seed | LM text task before | after | LM s | both stages s | all (with evaluation) s |", "|---|---|---|---|---|---|---|"]
    for name, runs in results["runs"].items():
        for seed, h in runs.items():
            lines.append(f"| {name} | {seed} | {fmt(h['lm_text_accuracy_before'])} | {fmt(h['lm_text_accuracy_after'])} | "
                         f"{h['lm_seconds']:.0f} | {h['train_seconds']:.0f} | {h['seconds']:.0f} |")
    lines += ["", "Issue 12's targets, per run of the default (met / not met):", ""]
    for name, runs in results["runs"].items():
        if name != "default":
            continue  # the comparisons are there to differ, and reuse the default's language model
        for seed, h in runs.items():
            lines.append(f"- {name}, seed {seed}: " + "; ".join(f"{what} {'met' if ok else 'NOT met'}" for what, ok in targets(h)))
    if results.get("notes"):
        lines += ["", "Notes recorded with the results:", ""] + [f"- {note}" for note in results["notes"]]
    write_text_atomic(path, "\n".join(lines) + "\n")


def targets(h: dict) -> list:
    """The issue's targets as (description, met) pairs, from one run's history."""
    c, curve, inside, blind = h["chance"], h["shots_curve"], h["in_support_accuracy"], h["text_only_lm_curve"]
    known = [(int(k), v) for k, v in curve.items() if v is not None]
    checks = [
        ("0 shots within 0.03 of chance", "0" in curve and curve["0"] is not None and abs(curve["0"] - c) <= 0.03),
        ("in support >= 0.95 at 1-4", all(inside.get(k) is not None and inside[k] >= 0.95 for k in ("1", "2", "4") if k in inside)),
        ("in support >= 0.85 at 16, 32", all(inside.get(k) is not None and inside[k] >= 0.85 for k in ("16", "32") if k in inside)),
        ("curve rises with k", all(b >= a for (_, a), (_, b) in zip(known, known[1:]))),
        ("text-only LM within 0.03 of chance", all(abs(v - c) <= 0.03 for v in blind.values())),
        ("both stages <= 300 s", h["train_seconds"] <= 300),
    ]
    return checks


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    colours = {"default": "C0", "per_media": "C1", "all_previous": "C2", "unfrozen_lm": "C3", "handmade_vision": "C4"}
    chance = None
    for name, runs in results["runs"].items():
        for i, (seed, h) in enumerate(runs.items()):
            chance = h["chance"]
            pts = [(max(int(k), 0), v) for k, v in h["shots_curve"].items() if v is not None]
            xs = [k if k > 0 else 0.5 for k, _ in pts]  # k = 0 drawn at 0.5 on the log axis
            ax.plot(xs, [v for _, v in pts], "o-", color=colours.get(name, "k"), alpha=0.8, label=name if i == 0 else None)
            if name == "default":
                blind = [(int(k) if int(k) > 0 else 0.5, v) for k, v in h["text_only_lm_curve"].items()]
                ax.plot(*zip(*blind), "x:", color="grey", label="text-only LM" if i == 0 else None)
    if chance is not None:
        ax.axhline(chance, color="k", ls="--", lw=1, label="chance")
    ax.set_xscale("log")
    ax.set_xticks([0.5, 1, 2, 4, 8, 16, 32], ["0", "1", "2", "4", "8", "16", "32"])
    ax.set_xlabel("shots (support pictures in the prompt)")
    ax.set_ylabel("held-out accuracy")
    ax.set_ylim(0, 1)
    ax.set_title("The tiny Flamingo learns names from its prompt")
    ax.legend(fontsize=8)
    fig.tight_layout()
    write_figure_atomic(fig, path, dpi=110)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=ROOT / "results" / "fewshot.json")
    parser.add_argument("--report-only", action="store_true", help="no training: the table and the picture from the recorded results")
    parser.add_argument("--save-model", type=Path, default=None,
                        help="also write the default seed-0 model there (what the lesson-12 command makes; see tests/test_fewshot_model.py)")
    parser.add_argument("--lm-from", type=Path, default=None,
                        help="a model written by --save-model: its seed's comparisons reuse its language model instead of training the default again")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    results = json.loads(args.out.read_text()) if args.out.exists() else {"runs": {}}
    if args.report_only:
        write_table(results, ROOT / "FEWSHOT.md")
        plot(results, ROOT / "fewshot_curve.png")
        return 0
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    results["machine"] = f"{platform.processor() or platform.machine()}, {args.threads} torch threads, load average {load:.1f} at start, torch {torch.__version__}"
    # the default for every seed first (each trains its seed's language model), then the comparisons, which reuse it
    lms = {}
    if args.lm_from is not None:  # a saved default model: its language model, for comparisons without retraining it
        model, setup = load_model(args.lm_from)
        lms[setup.seed] = model.lm
    plan = ([(seed, "default") for seed in args.seeds if "default" in args.configs or seed not in lms]
            + [(seed, c) for seed in args.seeds for c in args.configs if c != "default"])
    for seed, name in plan:
        setup = replace(FewShotSetup(seed=seed), **CONFIGS[name])
        start = time.perf_counter()
        model, h = run_fewshot(setup, progress=False, lm=copy.deepcopy(lms[seed]) if seed in lms else None)
        lms.setdefault(seed, copy.deepcopy(model.lm))
        if name == "default" and seed == 0 and args.save_model is not None:
            save_model(model, h, args.save_model)
        if name not in args.configs:
            continue
        results["runs"].setdefault(name, {})[str(seed)] = {k: h[k] for k in KEEP}
        args.out.parent.mkdir(parents=True, exist_ok=True)
        write_json(args.out, results)
        print(f"{name} seed {seed}: {h['shots_curve']} ({time.perf_counter() - start:.0f} s)", flush=True)
    write_table(results, ROOT / "FEWSHOT.md")
    plot(results, ROOT / "fewshot_curve.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
