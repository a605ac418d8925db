"""In-context learning on what training never showed (issue 20): the held-out format and rule inference, per seed,
beside their baselines, with issue 20's targets checked on each seed.

    python benchmarks/heldout.py                                  # train and evaluate seeds 0 1 2 (about 4 min each)
    python benchmarks/heldout.py --config many_links              # training episodes with 9 links (8 words or none), not 1
    python benchmarks/heldout.py --config colliding_links         # 12 links, 3 of which also begin captions
    python benchmarks/heldout.py --model assets/fewshot_model.pt  # evaluate a saved model (its own seed) only
    python benchmarks/heldout.py --config many_links --model assets/fewshot_many_links.pt
    python benchmarks/heldout.py --report-only                    # the table from benchmarks/results/heldout.json
    python benchmarks/heldout.py --config many_links --seeds 0 --save-model assets/fewshot_many_links.pt
    python benchmarks/heldout.py --config colliding_links --seeds 0 --save-model assets/fewshot_colliding_links.pt

Each seed is `run_fewshot(FewShotSetup(seed=s, **CONFIGS[config]))`, the recipe of `python -m flamingo_lite.train --task fewshot`, whose
history holds the `heldout_format`, `rule_inference` and `induction_heads` blocks (`flamingo_lite.tiny.heldout`).
Writes benchmarks/results/heldout.json after every seed (atomically) and the table benchmarks/HELDOUT.md.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT.parent))

from flamingo_lite.files import write_text_atomic  # noqa: E402
from flamingo_lite.tiny.fewshot import (  # noqa: E402
    CAPTION_ARTICLES, COLLIDING_LINKS, MANY_LINKS, FewShotSetup, fewshot_curve, fewshot_tokenizer, load_model, make_heldout_episodes, run_fewshot, save_model,
)
from flamingo_lite.tiny.heldout import heldout_curves  # noqa: E402

CONFIGS = {
    "default": {},  # training episodes all `<image> is NAME <eoc>`
    "many_links": {"links": MANY_LINKS},  # one of 9 links per episode ("" for none), never `a`: --many-links
    # those 9 and the, one, this, which also begin captions: --colliding-links
    "colliding_links": {"links": COLLIDING_LINKS, "articles": CAPTION_ARTICLES},
}
TASKS = ("heldout_format", "rule_inference")
OPEN_ENDED = (("open_ended_curve", "writes the name, then `<eoc>`"), ("likelihood_curve", "likelihood scoring, the same prompts"),
              ("open_ended_name", "writes a name first"), ("open_ended_caption", "writes the picture's caption instead"))
CURVES = (("curve", "Flamingo"), ("knn_curve", "nearest neighbour"), ("lm_only_curve", "LM alone, no pictures"),
          ("head_ablated_curve", "induction head(s) zeroed, picked by effect"),
          ("attention_head_ablated_curve", "head(s) zeroed, picked by attention"), ("in_support", "answer's name in the prompt"),
          ("prompt_names_guess", "a guess among the prompt's names"))


def fmt(v) -> str:
    return "-" if v is None else f"{v:.2f}"


def targets(run: dict) -> list[tuple[str, bool]]:
    """Issue 20's targets on one seed, each with whether it is met."""
    held, rule = run["heldout_format"], run["rule_inference"]
    c, r = held["curve"], rule["curve"]
    gain = r["16"] - rule["chance"]
    kept = held["head_ablated_curve"]["16"] - held["chance"]
    return [
        ("held-out format 0-shot within 0.05 of chance", abs(c["0"] - held["chance"]) <= 0.05),
        ("held-out format 16-shot >= 0.7", c["16"] >= 0.7),
        ("held-out format 16-shot >= 2-shot + 0.2", c["16"] >= c["2"] + 0.2),
        ("rule inference 16-shot >= nearest neighbour + 0.15", r["16"] >= rule["knn_curve"]["16"] + 0.15),
        ("rule inference 16-shot >= 1-shot + 0.15", r["16"] >= r["1"] + 0.15),
        ("head ablation removes at least half of the held-out format's 16-shot gain over chance",
         c["16"] - held["chance"] > 0 and kept <= 0.5 * (c["16"] - held["chance"])),
        ("head ablation removes at least half of rule inference's 16-shot gain over chance",
         gain > 0 and rule["head_ablated_curve"]["16"] - rule["chance"] <= 0.5 * gain),
    ]


def write_table(results: dict, path: Path) -> None:
    lines = ["# In-context learning on held-out formats (issue 20)", "",
             "Made by `python benchmarks/heldout.py`; the numbers are in `results/heldout.json`. Accuracy (likelihood scoring "
             "of the 16 names) on 500 held-out episodes against the number k of support pictures; chance is 1/16 = 0.06. "
             "The held-out format is the naming task in `<image> a NAME <eoc>`, a template no training sequence has; rule "
             "inference names pictures by colour in half the prompts and by shape in the other half, and the query's "
             "colour-shape combination is never among the support pictures (`flamingo_lite/tiny/heldout.py`).", "",
             f"Machine: {results.get('machine', '?')}", ""]
    lines += ["## At 16 shots, every seed", "",
              "| config | seed | training template | held-out format | held-out format, written (beam 3) | nearest neighbour "
              "| head(s) by effect zeroed | head(s) by attention zeroed | rule inference | its nearest neighbour | targets met |",
              "|---|---|---|---|---|---|---|---|---|---|---|"]
    for config, runs in results["runs"].items():
        for seed, run in sorted(runs.items(), key=lambda kv: int(kv[0])):
            held, rule = run["heldout_format"], run["rule_inference"]
            met = sum(ok for _, ok in targets(run))
            written = run.get("open_ended", {}).get("open_ended_curve", {}).get("16")
            lines.append(f"| {config} | {seed} | {fmt(run['shots_curve']['16'])} | {fmt(held['curve']['16'])} | {fmt(written)} | "
                         f"{fmt(held['knn_curve']['16'])} | {fmt(held['head_ablated_curve']['16'])} | "
                         f"{fmt(held.get('attention_head_ablated_curve', {}).get('16'))} | {fmt(rule['curve']['16'])} | "
                         f"{fmt(rule['knn_curve']['16'])} | {met} of {len(targets(run))} |")
    lines.append("")
    missing = {config: [s for s in ("0", "1", "2") if s not in runs] for config, runs in results["runs"].items()}
    lines += [f"Not yet recorded: config `{config}`, seed(s) {', '.join(seeds)} (`python benchmarks/heldout.py --config "
              f"{config} --seeds {' '.join(seeds)}`)." for config, seeds in missing.items() if seeds]
    lines += ["", "`many_links` trains on episodes that link a picture to its name with one of 9 links (8 words, or none), drawn per "
              "episode; `a` is never one of them (`python -m flamingo_lite.train --task fewshot --many-links`). It is a first "
              "step toward the paper's generic data (many formats, Sec. 2.4), not the default. `colliding_links` adds 3 links, "
              "`the`, `one` and `this`, that also begin captions, each caption's first word drawn from `a` and those 3 "
              "(`<image> the red circle <eoc>`), so that after `<image> the` a name follows in some sequences and a caption "
              "in others and only the sequence says which, as in the held-out format after `<image> a`; `a` is still never "
              "a link (`--colliding-links`). Lesson 12 loads the three committed models, seed 0 of each: "
              "`assets/fewshot_model.pt` (`default`), `assets/fewshot_many_links.pt` (`many_links`) and "
              "`assets/fewshot_colliding_links.pt` (`colliding_links`).", ""]
    lines += [f"- {note}" for note in results.get("notes", [])] + ([""] if results.get("notes") else [])
    for config, runs in results["runs"].items():
        links = CONFIGS.get(config, {}).get("links", ("is",))
        lines += [f"## Config `{config}`: training links {', '.join(repr(w) for w in links)}", ""]
        for seed, run in sorted(runs.items(), key=lambda kv: int(kv[0])):
            lines += [f"### Seed {seed} ({run.get('source', 'trained')})", ""]
            for task in TASKS:
                block = run[task]
                ks = list(block["curve"])
                lines += [f"{task.replace('_', ' ')}, template `{block['template']}`:", "",
                          "| | " + " | ".join(f"k={k}" for k in ks) + " |", "|---|" + "---|" * len(ks)]
                lines += [f"| {label} | " + " | ".join(fmt(block[key][k]) for k in ks) + " |" for key, label in CURVES if key in block]
                lines.append("")
            answered = run.get("open_ended")
            if answered:
                ks = list(answered["open_ended_curve"])
                lines += [f"open-ended, template `{answered['template']}`, the first {answered['num_episodes']} prompts "
                          f"answered by beam search (beam {answered['num_beams']}, App. A.2) until `<eoc>`:", "",
                          "| | " + " | ".join(f"k={k}" for k in ks) + " |", "|---|" + "---|" * len(ks)]
                lines += [f"| {label} | " + " | ".join(fmt(answered[key][k]) for k in ks) + " |" for key, label in OPEN_ENDED]
                lines.append("")
            found = run["induction_heads"]
            named = lambda pairs: ", ".join(f"layer {l} head {h}" for l, h in pairs)  # noqa: E731
            if found.get("by") == "effect":
                costs = ", ".join(f"layer {l} head {h} {found['effect'][l][h]:+.2f}" for l, h in
                                  sorted(((l, h) for l in range(len(found["effect"])) for h in range(len(found["effect"][0]))),
                                         key=lambda lh: -found["effect"][lh[0]][lh[1]]))
                lines += [f"Induction head(s), by effect (what zeroing each head alone costs the held-out format at 8 shots, "
                          f"on 200 calibration episodes apart from the scored ones): {named(found['heads'])}. Every head's "
                          f"cost: {costs}.", "",
                          f"By attention on same-class names in the training template: {named(found['attention_heads'])}.", ""]
            else:
                lines += [f"Induction head(s), by attention on same-class names in the training template: {named(found['heads'])}.", ""]
            lines += ["Issue 20's targets:", ""]
            lines += [f"- {name}: {'met' if ok else 'not met'}" for name, ok in targets(run)]
            lines.append("")
    write_text_atomic(path, "\n".join(lines))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--config", default="default", choices=list(CONFIGS))
    parser.add_argument("--model", type=Path, default=None, help="evaluate this saved few-shot model instead of training")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=ROOT / "results" / "heldout.json")
    parser.add_argument("--report-only", action="store_true")
    parser.add_argument("--save-model", type=Path, default=None,
                        help="with one seed: also write the trained model there, as `python -m flamingo_lite.train --task "
                             "fewshot --save-model` does (assets/fewshot_many_links.pt is --config many_links --seeds 0)")
    args = parser.parse_args(argv)
    if args.save_model is not None and (len(args.seeds) != 1 or args.model is not None or args.report_only):
        parser.error("--save-model keeps one trained model: give exactly one --seeds, and no --model or --report-only")
    torch.set_num_threads(args.threads)
    results = json.loads(args.out.read_text()) if args.out.exists() else {"runs": {}}
    if not args.report_only:
        load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
        results["machine"] = f"{platform.processor() or platform.machine()}, {args.threads} torch threads, load average {load:.1f} at start, torch {torch.__version__}"
        jobs = [None] if args.model is not None else args.seeds
        for seed in jobs:
            start = time.perf_counter()
            if args.model is not None:
                model, setup = load_model(args.model)
                if setup.links != tuple(CONFIGS[args.config].get("links", FewShotSetup().links)):
                    parser.error(f"{args.model} was trained with the links {setup.links}, not those of --config {args.config}")
                run = heldout_curves(model, fewshot_tokenizer(setup.links), setup.shots, num_episodes=setup.num_heldout,
                                     pool_size=setup.pool_size, seed=setup.seed)
                episodes = make_heldout_episodes(setup.num_heldout, seed=setup.seed, pool_size=setup.pool_size)
                curve = fewshot_curve(model, episodes, fewshot_tokenizer(setup.links), setup.shots)
                run["shots_curve"] = {k: v["scoring"] for k, v in curve.items()}
                seed, run["source"] = setup.seed, f"evaluated from {args.model.as_posix()}"
            else:
                model, history = run_fewshot(FewShotSetup(seed=seed, **CONFIGS[args.config]), progress=False)
                if args.save_model is not None:
                    save_model(model.cpu(), history, args.save_model)
                run = {k: history[k] for k in (*TASKS, "induction_heads", "open_ended", "shots_curve", "seconds")}
                run["source"] = f"trained, {history['seconds']:.0f} s with evaluation"
            runs = results["runs"].setdefault(args.config, {})
            recorded = runs.get(str(seed))
            if args.model is not None and recorded is not None:  # the recorded run's model: keep how it was made
                run["source"] = f"{recorded['source']}; re-evaluated from {args.model.as_posix()}"
                run = {**recorded, **run}
            runs[str(seed)] = run
            args.out.parent.mkdir(parents=True, exist_ok=True)
            write_text_atomic(args.out, json.dumps(results, indent=1))
            print(f"seed {seed}: held-out format {run['heldout_format']['curve']}, rule inference "
                  f"{run['rule_inference']['curve']} ({time.perf_counter() - start:.0f} s)", flush=True)
    write_table(results, ROOT / "HELDOUT.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
