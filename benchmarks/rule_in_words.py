"""Why no rule is inferred: the frozen language model on rule inference written as words, beside a vote.

    python benchmarks/rule_in_words.py        # the three committed seed-0 models, about 30 s

Flamingo's language model is frozen: the pictures can change what it reads, not how it matches. So this asks the
language model of each committed model (`assets/fewshot_*.pt`, seed 0) the rule-inference prompts of
`benchmarks/heldout.py` (the same 500 episodes and support pictures at each k) written as words, `red circle is dax
<eoc> ... red triangle is`, the form of its own pretraining, and compares it with `attribute_vote` (the name most
support examples sharing a word with the query give: no rule, only shared words counted), with Flamingo's curve on
the pictures and with nearest neighbour, both read from `benchmarks/results/heldout.json`.
Writes benchmarks/results/rule_in_words.json (atomically) and prints the table.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT.parent))

from flamingo_lite.files import write_text_atomic  # noqa: E402
from flamingo_lite.tiny.fewshot import fewshot_tokenizer, load_model  # noqa: E402
from flamingo_lite.tiny.heldout import make_rule_episodes, rule_in_words  # noqa: E402

MODELS = {"default": "fewshot_model.pt", "many_links": "fewshot_many_links.pt",
          "colliding_links": "fewshot_colliding_links.pt"}
SHOTS = (0, 1, 2, 4, 8, 16, 32)
NUM_EPISODES = 500  # benchmarks/heldout.py's


def main() -> int:
    torch.set_num_threads(1)  # the same sums on every machine
    heldout = json.loads((ROOT / "results" / "heldout.json").read_text())["runs"]
    record = {"episodes": NUM_EPISODES, "seed": 0, "runs": {}}
    print(f"rule inference, seed 0, {NUM_EPISODES} episodes    " + "".join(f"{f'k={k}':>7}" for k in SHOTS))
    for config, file_name in MODELS.items():
        model, setup = load_model(ROOT.parent / "assets" / file_name)
        tokenizer = fewshot_tokenizer(setup.links)
        episodes = make_rule_episodes(NUM_EPISODES, seed=setup.seed, pool_size=setup.pool_size)
        got = {str(k): rule_in_words(model.lm, episodes, k, tokenizer, seed=setup.seed, device="cpu") for k in SHOTS}
        pictures = heldout[config][str(setup.seed)]["rule_inference"]
        run = {"lm_words_curve": {k: v["lm_words"] for k, v in got.items()},
               "attribute_vote_curve": {k: v["attribute_vote"] for k, v in got.items()},
               "flamingo_curve": {str(k): pictures["curve"][str(k)] for k in SHOTS},
               "knn_curve": {str(k): pictures["knn_curve"][str(k)] for k in SHOTS},
               "chance": pictures["chance"]}
        record["runs"][config] = run
        for key, label in (("lm_words_curve", "LM on the words"), ("attribute_vote_curve", "vote by shared words"),
                           ("flamingo_curve", "Flamingo, pictures"), ("knn_curve", "nearest neighbour")):
            print(f"  {config:<16} {label:<22}" + "".join(f"{run[key][str(k)]:7.2f}" for k in SHOTS))
    out = ROOT / "results" / "rule_in_words.json"
    write_text_atomic(out, json.dumps(record, indent=1) + "\n")
    print(f"wrote {out.relative_to(ROOT.parent)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
