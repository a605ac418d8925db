"""An experiment on the second half of why no rule is inferred: give the language model the rule in text, then ask
Flamingo for it on pictures.

    python benchmarks/rule_text_lm.py [--seed 0] [--p-rule 0.3]    # about 11 minutes on one core

`benchmarks/rule_in_words.py` shows that the frozen language model of every committed model is at chance on rule
inference written as words, so Flamingo cannot get it from there. This run removes that cause and measures what is
left. It is `--colliding-links`'s recipe (`run_fewshot`), except that a share `--p-rule` of the language model's
text-only pretraining sequences are rule episodes written as words: the names follow the colour or the shape, and
the query is a combination none of the sequence's examples shows (`red circle is dax <eoc> red square is dax <eoc>
... red triangle is dax`). Then the language model is frozen and the resampler and the gated blocks are trained on
the usual picture sequences, which hold no rule episode. So the rule is no longer held out as a task for the
language model; it is held out only on pictures.

Writes benchmarks/results/rule_text_lm.json (atomically), one run per seed under "runs", keeping the other seeds':
the language model's rule inference on the words, and Flamingo's rule-inference and held-out-template curves on the
pictures with their baselines, beside the colliding-links run of the same seed in benchmarks/results/heldout.json.

`--p-attribute P` adds the other half of the question: a share P of the caption sequences (of the language model's
text and of Flamingo's pictures) name one attribute only, colour or shape, drawn per sequence (`<image> a red <eoc>
<image> the blue <eoc>`), so that the gated blocks are paid for writing colour and shape apart. Those runs go to
benchmarks/results/rule_attribute_captions.json, keyed by P and seed.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT.parent))

from flamingo_lite.files import write_text_atomic  # noqa: E402
from flamingo_lite.tiny import fewshot as fs  # noqa: E402
from flamingo_lite.tiny import heldout as ho  # noqa: E402
from flamingo_lite.tiny.data import PAD_TOKEN, COLOURS, SHAPES  # noqa: E402
from flamingo_lite.tiny.language_model import LMConfig, TinyLM  # noqa: E402
from flamingo_lite.tiny.training import seed_everything  # noqa: E402

CURVES = ("curve", "knn_curve", "lm_only_curve", "head_ablated_curve", "prompt_names_guess")


def rule_text_rows(num_rows: int, rng: np.random.Generator, max_shots: int) -> list[list[str]]:
    """Rule episodes written as words: a name per colour (or per shape), 2 to `max_shots` examples, none of them of
    the query's class, then the query and its name."""
    rows = []
    for _ in range(num_rows):
        attribute = ho.ATTRIBUTES[int(rng.integers(len(ho.ATTRIBUTES)))]
        values = len(COLOURS) if attribute == "colour" else len(SHAPES)
        value_names = rng.permutation(len(fs.NAMES))[:values]  # a name per value of the attribute that counts
        names = [int(value_names[ho.attribute_value(c, attribute)]) for c in range(len(fs.CLASSES))]
        query = int(rng.integers(len(fs.CLASSES)))
        others = [c for c in range(len(fs.CLASSES)) if c != query]  # the query's combination is never shown
        shots = [others[int(j)] for j in rng.integers(len(others), size=int(rng.integers(2, max_shots + 1)))]
        words = [w for c in shots for w in fs.shot_words(c, fs.NAMES[names[c]], picture=False)]
        rows.append(words + fs.shot_words(query, fs.NAMES[names[query]], picture=False))
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--p-rule", type=float, default=0.3, help="share of the text sequences that are rule episodes")
    parser.add_argument("--p-attribute", type=float, default=0.0,
                        help="share of the caption sequences that name one attribute only, colour or shape "
                             "(`<image> a red <eoc>`); above 0 the run is recorded in results/rule_attribute_captions.json")
    args = parser.parse_args(argv)
    if not 0.0 < args.p_rule <= 1.0:
        parser.error(f"--p-rule must lie in (0, 1], got {args.p_rule}")
    if not 0.0 <= args.p_attribute <= 1.0:
        parser.error(f"--p-attribute must lie in [0, 1], got {args.p_attribute}")
    out = ROOT / "results" / ("rule_attribute_captions.json" if args.p_attribute > 0 else "rule_text_lm.json")
    torch.set_num_threads(1)
    start = time.perf_counter()
    setup = fs.FewShotSetup(seed=args.seed, links=fs.COLLIDING_LINKS, articles=fs.CAPTION_ARTICLES, p_attribute=args.p_attribute)
    tok = fs.fewshot_tokenizer(setup.links)
    seed_everything(setup.seed)
    text = fs.make_training_data(setup.num_train, seed=setup.seed * 2, text_only=True, max_images=setup.max_images,
                                 max_shots=setup.max_shots, p_all_picture=setup.p_all_picture,
                                 p_caption=setup.p_caption, tokenizer=tok, links=setup.links, articles=setup.articles,
                                 p_attribute=setup.p_attribute)
    rng = np.random.default_rng([setup.seed, 777])  # a stream of its own: the rest of the recipe draws as before
    replaced = np.flatnonzero(rng.random(setup.num_train) < args.p_rule)  # the rows that become rule episodes
    rows = [[w for w in tok.words(r) if w != PAD_TOKEN] for r in text.tokens]
    for i, words in zip(replaced, rule_text_rows(len(replaced), rng, setup.max_shots)):
        rows[i] = words
    n = max(len(r) for r in rows)
    tokens = torch.tensor([tok.encode(r + [PAD_TOKEN] * (n - len(r))) for r in rows], dtype=torch.long)  # (N, n)
    rule_rows = set(replaced.tolist())
    kinds = ["rule" if i in rule_rows else k for i, k in enumerate(text.kinds)]
    text = fs.FewShotData(text.images, tokens, torch.zeros_like(tokens, dtype=torch.bool), text.num_images, kinds,
                          text.assignments)
    lm = TinyLM(LMConfig(vocab_size=len(tok), max_len=256, token_shift=setup.token_shift, positions=setup.positions))
    fs.train_language_model(lm, text, steps=setup.lm_steps, batch_size=setup.lm_batch_size, lr=setup.lm_lr,
                            seed=setup.seed, device="cpu", progress=False, pad_id=tok.pad_id, bucket_by_length=True)
    rules = ho.make_rule_episodes(setup.num_heldout, seed=setup.seed, pool_size=setup.pool_size)
    words = {str(k): ho.rule_in_words(lm, rules, k, tok, seed=setup.seed, device="cpu")["lm_words"] for k in setup.shots}
    _, history = fs.run_fewshot(setup, device="cpu", progress=False, lm=lm)
    before = json.loads((ROOT / "results" / "heldout.json").read_text())["runs"]["colliding_links"].get(str(args.seed))
    record = {
        "seed": args.seed, "p_rule": args.p_rule, "p_attribute": args.p_attribute, "rule_rows": int(len(replaced)), "seconds": time.perf_counter() - start,
        "lm_words_curve": words,
        "rule_inference": {c: history["rule_inference"][c] for c in CURVES},
        "heldout_format": {c: history["heldout_format"][c] for c in CURVES},
        "training_template_16": history["shots_curve"]["16"] if "shots_curve" in history else None,
        "colliding_links_before": None if before is None else {
            "rule_inference": {c: before["rule_inference"][c] for c in CURVES},
            "heldout_format": {c: before["heldout_format"][c] for c in CURVES}},
    }
    runs = json.loads(out.read_text())["runs"] if out.exists() else {}  # the other seeds' runs stay
    runs[str(args.seed) if args.p_attribute == 0 else f"p_attribute={args.p_attribute}, seed={args.seed}"] = record
    write_text_atomic(out, json.dumps({"runs": dict(sorted(runs.items(), key=lambda kv: (kv[1].get("p_attribute", 0.0), kv[1]["seed"])))}, indent=1) + "\n")
    print(f"the language model on rule inference written as words: " + " ".join(f"k={k} {v:.2f}" for k, v in words.items()))
    for task in ("rule_inference", "heldout_format"):
        block = record[task]
        print(f"{task}, pictures, 16 shots: Flamingo {block['curve']['16']:.2f}, nearest neighbour "
              f"{block['knn_curve']['16']:.2f}, head(s) zeroed {block['head_ablated_curve']['16']:.2f}"
              + ("" if before is None else f"; colliding links without rule text {before[task]['curve']['16']:.2f}"))
    print(f"wrote {out.relative_to(ROOT.parent)} in {record['seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
