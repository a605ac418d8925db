"""Held-out formats and rule inference (flamingo_lite.tiny.heldout): the template no training sequence has, the
rule episodes' invariants, the nearest-neighbour baseline, and head ablation."""
import pytest
import torch

from flamingo_lite.masks import MEDIA_TOKEN
from flamingo_lite.tiny import fewshot as fs
from flamingo_lite.tiny import heldout as ho
from flamingo_lite.tiny.language_model import LMConfig, TinyLM, zero_attention_heads

TOK = fs.fewshot_tokenizer()


def test_the_heldout_template_is_in_no_training_sequence():
    words = ho.template_words([0, 5], list(range(12)), ho.HELDOUT_WORD)
    assert words == [MEDIA_TOKEN, "a", fs.NAMES[0], fs.EOC_TOKEN, MEDIA_TOKEN, "a", fs.NAMES[5], fs.EOC_TOKEN, MEDIA_TOKEN, "a"]
    for data in (fs.make_training_data(600, seed=0, max_shots=8), fs.make_training_data(600, seed=1, max_shots=8, text_only=True)):
        after_a = set()
        for row in data.tokens:
            seq = TOK.words(row)
            after_a |= {seq[i + 1] for i in range(len(seq) - 1) if seq[i] == ho.HELDOUT_WORD}
        assert after_a and not after_a & set(fs.NAMES)  # `a` is followed by colours (captions), never by a name


def test_rule_episodes_name_by_one_attribute_and_never_show_the_query():
    episodes = ho.make_rule_episodes(40, seed=0, pool_size=30)
    assert {ep.attribute for ep in episodes} == {"colour", "shape"}
    for ep in episodes:
        assert ep.query_class not in ep.pool_classes  # the query's combination is never in the prompt
        for a in range(len(fs.CLASSES)):
            for b in range(len(fs.CLASSES)):
                same_value = ho.attribute_value(a, ep.attribute) == ho.attribute_value(b, ep.attribute)
                assert (ep.names[a] == ep.names[b]) == same_value  # a name per value of the attribute that counts
    again = ho.make_rule_episodes(40, seed=0, pool_size=30)
    assert all(torch.equal(x.pool_images, y.pool_images) and x.names == y.names for x, y in zip(episodes, again))
    assert ho.make_rule_episodes(40, seed=1, pool_size=30)[0].names != episodes[0].names or \
        ho.make_rule_episodes(40, seed=1, pool_size=30)[0].pool_classes != episodes[0].pool_classes


def _model(seed=0):
    torch.manual_seed(seed)
    lm = TinyLM(LMConfig(vocab_size=len(TOK), max_len=80, token_shift=4, positions="none"))
    return fs.build_model(fs.FewShotSetup(), lm, TOK).eval()


def _one_hot_grids(episodes, dim, value):
    """Grids (P+1, 1, d) whose pooled feature is a one-hot of value(class): nearest neighbour is then exact."""
    grids = []
    for ep in episodes:
        classes = ep.pool_classes + [ep.query_class]
        g = torch.zeros(len(classes), 1, dim)
        for i, c in enumerate(classes):
            g[i, 0, value(c)] = 1.0
        grids.append(g)
    return grids


def test_nearest_neighbour_copies_the_most_similar_support_picture():
    model = _model()
    dim = model.resampler.latents.shape[-1]
    naming = fs.make_heldout_episodes(30, seed=1, pool_size=12)
    got = ho.evaluate_format(model, naming, 4, TOK, grids=_one_hot_grids(naming, dim, lambda c: c))
    assert got["knn"] == pytest.approx(got["in_support"])  # same class present: found; absent: a wrong name
    rules = ho.make_rule_episodes(30, seed=1, pool_size=12)
    by_colour = ho.evaluate_format(model, rules, 8, TOK, word=fs.IS, grids=_one_hot_grids(rules, dim, lambda c: ho.attribute_value(c, "colour")))
    colour_episodes = [ep for ep in rules if ep.attribute == "colour"]
    only_colour = ho.evaluate_format(model, colour_episodes, 8, TOK, word=fs.IS,
                                     grids=_one_hot_grids(colour_episodes, dim, lambda c: ho.attribute_value(c, "colour")))
    assert only_colour["knn"] == pytest.approx(only_colour["in_support"])  # colour features, colour rule: lookup works
    assert by_colour["knn"] < only_colour["knn"]  # the shape rule is not found by looking up colours
    assert ho.evaluate_format(model, naming, 0, TOK)["knn"] == pytest.approx(1 / 16)  # nothing to look up


def test_prompt_names_guess_is_one_over_the_names_shown():
    model = _model()
    episodes = fs.make_heldout_episodes(20, seed=2, pool_size=10)
    got = ho.evaluate_format(model, episodes, 10, TOK)  # the whole pool: every pool class is shown
    expected = [1 / len({ep.names[c] for c in ep.pool_classes}) if ep.query_class in ep.pool_classes else 0.0 for ep in episodes]
    assert got["prompt_names_guess"] == pytest.approx(sum(expected) / len(expected))
    assert 0.0 <= got["scoring"] <= 1.0 and got["in_support"] == pytest.approx(sum(e > 0 for e in expected) / 20)


def test_zeroing_a_head_is_zeroing_its_slice_of_the_output_projection():
    lm = TinyLM(LMConfig(vocab_size=len(TOK), max_len=20, token_shift=4, positions="none"))
    tokens = torch.randint(0, len(TOK), (2, 12))
    before = lm(tokens)
    with zero_attention_heads(lm, [(1, 2)]):
        ablated = lm(tokens)
    torch.testing.assert_close(lm(tokens), before)  # the hook is gone after the block
    e = lm.config.dim // lm.config.heads
    with torch.no_grad():
        lm.blocks[1].attn.to_out.weight[:, 2 * e:3 * e] = 0
    torch.testing.assert_close(ablated, lm(tokens))
    assert not torch.allclose(ablated, before)
    with pytest.raises(ValueError, match=r"head \(2, 0\) is out of range"):
        with zero_attention_heads(lm, [(2, 0)]):
            pass
    with pytest.raises(TypeError, match="pairs of ints"):
        with zero_attention_heads(lm, [(0,)]):
            pass


def test_induction_heads_picks_heads_that_look_at_same_class_names():
    share = torch.zeros(2, 4, 2)
    share[0, 3] = torch.tensor([0.7, 0.1])
    share[1, 0] = torch.tensor([0.6, 0.3])  # above the threshold but not 3 times the other names
    assert ho.induction_heads(share) == [(0, 3)]
    share[0, 3] = torch.tensor([0.2, 0.1])
    assert ho.induction_heads(share) == [(1, 0)]  # none qualifies: the most induction-like
    table = ho.name_attention(_model(), fs.make_heldout_episodes(10, seed=0, pool_size=12), TOK, k=8)
    assert table.shape == (2, 4, 2) and bool((table >= 0).all()) and bool((table.sum(-1) <= 1 + 1e-5).all())


def test_heads_by_effect_picks_the_costliest_head_and_those_near_it():
    effects = torch.zeros(2, 4)
    effects[1, 2], effects[0, 1], effects[0, 0] = 0.30, 0.16, 0.14  # 0.16 is over half of 0.30, 0.14 is not
    assert ho.heads_by_effect(effects) == [(1, 2), (0, 1)]
    assert ho.heads_by_effect(effects, share=0.9) == [(1, 2)]
    assert ho.heads_by_effect(torch.full((2, 4), -0.01)) == [(0, 0)]  # no head helps: still one, the least harmful


def test_head_effects_is_the_accuracy_each_zeroed_head_costs():
    model, episodes = _model(), fs.make_heldout_episodes(12, seed=3, pool_size=12)
    effects = ho.head_effects(model, episodes, TOK, k=4)
    assert effects.shape == (2, 4)
    base = ho.evaluate_format(model, episodes, 4, TOK)["scoring"]
    with zero_attention_heads(model.lm, [(1, 3)]):
        zeroed = ho.evaluate_format(model, episodes, 4, TOK)["scoring"]
    assert float(effects[1, 3]) == pytest.approx(base - zeroed)
    assert ho.evaluate_format(model, episodes, 4, TOK)["scoring"] == base  # every head is back afterwards
    with pytest.raises(ValueError, match="k"):
        ho.head_effects(model, episodes, TOK, k=0)


def test_run_fewshot_writes_the_heldout_blocks():
    setup = fs.FewShotSetup(lm_steps=2, steps=2, num_train=64, num_heldout=8, max_shots=4, shots=(0, 1, 4), log_every=1)
    _, history = fs.run_fewshot(setup, progress=False)
    for key in ("heldout_format", "rule_inference"):
        block = history[key]
        assert block["chance"] == pytest.approx(1 / 16)
        for curve in ho.CURVES:
            assert set(block[curve]) == {"0", "1", "4"} and all(0.0 <= v <= 1.0 for v in block[curve].values())
    heads = history["induction_heads"]
    assert heads["heads"] and heads["attention_heads"] and len(heads["same_class_name_attention"]) == 2
    assert heads["by"] == "effect" and torch.tensor(heads["effect"]).shape == (2, 4)
    assert [tuple(h) for h in heads["heads"]] == ho.heads_by_effect(torch.tensor(heads["effect"]))
    answered = history["open_ended"]
    assert answered["num_beams"] == 3 and answered["num_episodes"] == 8 and answered["template"] == "<image> a NAME <eoc>"
    for curve in ho.OPEN_ENDED_CURVES:
        assert set(answered[curve]) == {"0", "1", "4"} and all(0.0 <= v <= 1.0 for v in answered[curve].values())
    assert all(answered["open_ended_curve"][k] <= answered["open_ended_name"][k] for k in ("0", "1", "4"))
    assert answered["likelihood_curve"] == {k: v for k, v in history["heldout_format"]["curve"].items()}  # all 8 prompts
    capped = fs.run_fewshot(fs.FewShotSetup(**{**setup.__dict__, "media_embedding": "per_media", "max_images": 2}), progress=False)[1]
    assert capped["rule_inference"]["curve"]["4"] is None and capped["rule_inference"]["curve"]["1"] is not None
    assert capped["open_ended"]["open_ended_curve"]["4"] is None and capped["open_ended"]["open_ended_curve"]["1"] is not None


def test_open_ended_answers_agree_with_likelihood_in_the_training_template_and_not_in_the_new_one():
    """The committed many-links model, 40 prompts at 8 shots: written with `is`, beam search writes the name the
    likelihood picks, every time; written with `a`, it writes the picture's caption instead (what `<image> a` is
    followed by in training), so the names likelihood scoring credits there are names the model would not write."""
    from pathlib import Path

    model, setup = fs.load_model(Path(__file__).resolve().parents[1] / "assets" / "fewshot_many_links.pt")
    tok = fs.fewshot_tokenizer(setup.links)
    episodes = fs.make_heldout_episodes(40, seed=0, pool_size=setup.pool_size)
    trained = ho.open_ended(model, episodes, 8, tok, word=fs.IS)
    assert trained["name"] == 1.0 and trained["caption"] == 0.0 and trained["exact"] == pytest.approx(trained["likelihood"], abs=0.05)
    new = ho.open_ended(model, episodes, 8, tok, word=ho.HELDOUT_WORD)
    assert new["caption"] > 0.9 and new["exact"] < 0.05 and new["likelihood"] > new["exact"]


class _Recording(torch.nn.Module):
    """A stand-in language model: records the prompts it reads and always prefers the name `favourite`."""

    def __init__(self, favourite):
        super().__init__()
        self.favourite, self.seen = TOK.index[favourite], []

    def forward(self, tokens):
        self.seen.append(tokens.clone())
        logits = torch.zeros(*tokens.shape, len(TOK))  # (E, n, V)
        logits[..., self.favourite] = 1.0
        return logits


def _rule_episode(attribute, support, query, names):
    """A rule episode of hand-picked classes, given as (colour, shape) pairs; `names[value]` per attribute value."""
    index = {pair: i for i, pair in enumerate(fs.CLASSES)}
    classes = [index[pair] for pair in support]
    per_class = [names[ho.attribute_value(c, attribute)] for c in range(len(fs.CLASSES))]
    pictures = torch.zeros(len(classes), 3, 16, 16)
    return ho.RuleEpisode(pictures, classes, torch.zeros(3, 16, 16), index[query], per_class, attribute)


def test_rule_in_words_writes_the_prompt_as_words_and_votes_by_shared_words():
    support = [("red", "circle"), ("red", "square"), ("blue", "triangle")]
    # by colour: red gives dax twice (colour shared), blue triangle gives wug once (shape shared): the vote is right
    by_colour = _rule_episode("colour", support, ("red", "triangle"), [0, 1, 2, 3])
    # by shape: each support example shares one word with a red triangle and all three names differ: a three-way tie
    by_shape = _rule_episode("shape", support, ("red", "triangle"), [4, 5, 6])
    lm = _Recording(fs.NAMES[by_colour.names[by_colour.query_class]])
    got = ho.rule_in_words(lm, [by_colour, by_shape], 3, TOK)
    assert got["attribute_vote"] == pytest.approx((1.0 + 1 / 3) / 2)
    assert got["lm_words"] == pytest.approx(0.5)  # the favourite name is the answer of the first episode only
    words = TOK.words(lm.seen[0][0])
    assert words[-3:] == ["red", "triangle", "is"] and MEDIA_TOKEN not in words
    shots = [tuple(words[i:i + 5]) for i in range(0, len(words) - 3, 5)]
    assert sorted(s[:2] for s in shots) == sorted(support)  # every support example, as its two words
    assert all(s[2] == fs.IS and s[4] == fs.EOC_TOKEN and s[3] in fs.NAMES for s in shots)
    assert ho.rule_in_words(lm, [by_colour], 0, TOK)["attribute_vote"] == pytest.approx(1 / 16)  # nothing shown: a guess


def test_lesson_12_quotes_the_recorded_rule_experiments():
    """The numbers lesson 12 gives for benchmarks/rule_in_words.py and rule_text_lm.py are the records' own."""
    import json
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    lesson = "".join("".join(c["source"]) for c in json.loads(
        (root / "notebooks" / "12_in_context_learning.ipynb").read_text())["cells"] if c["cell_type"] == "markdown")
    lesson = " ".join(lesson.split())  # the prose, its line breaks as spaces
    words = json.loads((root / "benchmarks" / "results" / "rule_in_words.json").read_text())["runs"]
    highest = max(v for run in words.values() for v in run["lm_words_curve"].values())
    assert f"stays at or below {highest:.2f}" in lesson
    assert f"the vote reaches {words['colliding_links']['attribute_vote_curve']['16']:.2f} at 16 shots" in lesson
    runs = json.loads((root / "benchmarks" / "results" / "rule_text_lm.json").read_text())["runs"]
    assert sorted(runs) == ["0", "1", "2"]  # every seed the lesson quotes
    rule = {s: (r["colliding_links_before"]["rule_inference"]["curve"]["16"], r["rule_inference"]["curve"]["16"],
                r["rule_inference"]["knn_curve"]["16"]) for s, r in runs.items()}
    held = {s: (r["colliding_links_before"]["heldout_format"]["curve"]["16"], r["heldout_format"]["curve"]["16"])
            for s, r in runs.items()}
    words = [runs[s]["lm_words_curve"]["16"] for s in ("0", "1", "2")]
    quoted = (f"gets {words[0]:.2f}, {words[1]:.2f} and {words[2]:.2f} on the words at 16 shots (seeds 0, 1 and 2)",
              "rises from {:.2f} to {:.2f} against nearest neighbour's {:.2f} on seed 0".format(*rule["0"]),
              "from {:.2f} to {:.2f} against {:.2f} on seed 1".format(*rule["1"]),
              "from {:.2f} to {:.2f} against {:.2f} on seed 2".format(*rule["2"]),
              "falls on seed 0, from {:.2f} to {:.2f}".format(*held["0"]),
              "from {:.2f} to {:.2f} on seed 1".format(*held["1"]), "from {:.2f} to {:.2f} on seed 2".format(*held["2"]))
    for claim in quoted:
        assert claim in lesson, claim
    assert all(after < knn for _, after, knn in rule.values())  # "below nearest neighbour every time"
    assert held["0"][1] < held["0"][0] and all(held[s][1] > held[s][0] for s in ("1", "2"))  # falls on 0, not on 1, 2


def test_lesson_12_quotes_the_recorded_attribute_caption_runs():
    """The numbers lesson 12 gives for `benchmarks/rule_text_lm.py --p-attribute` are the record's own, seeds 0-2."""
    import json
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    lesson = "".join("".join(c["source"]) for c in json.loads(
        (root / "notebooks" / "12_in_context_learning.ipynb").read_text())["cells"] if c["cell_type"] == "markdown")
    lesson = " ".join(lesson.split())
    runs = json.loads((root / "benchmarks" / "results" / "rule_attribute_captions.json").read_text())["runs"]
    half = [runs[f"p_attribute=0.5, seed={seed}"] for seed in (0, 1, 2)]
    every = runs["p_attribute=1.0, seed=0"]
    assert [(r["p_attribute"], r["seed"]) for r in (*half, every)] == [(0.5, 0), (0.5, 1), (0.5, 2), (1.0, 0)]
    text_only = json.loads((root / "benchmarks" / "results" / "rule_text_lm.json").read_text())["runs"]
    at16 = lambda rows, task, curve="curve": [f"{r[task][curve]['16']:.2f}" for r in rows]  # noqa: E731
    three = lambda v: f"{v[0]}, {v[1]} and {v[2]}"  # noqa: E731
    alone = [text_only[str(seed)] for seed in (0, 1, 2)]
    for claim in (f"reaches {three(at16(half, 'rule_inference'))} on seeds 0, 1 and 2 "
                  f"({three(at16(alone, 'rule_inference'))} with the rule text alone; nearest neighbour "
                  f"{three(at16(half, 'rule_inference', 'knn_curve'))})",
                  f"it reaches {every['rule_inference']['curve']['16']:.2f} again",
                  f"({three(at16(half, 'heldout_format'))}, against {three(at16(half, 'heldout_format', 'knn_curve'))})"):
        assert claim in lesson, claim
    rule = [r["rule_inference"]["curve"]["16"] for r in half]
    knn = [r["rule_inference"]["knn_curve"]["16"] for r in (*half, every)]
    assert all(r["rule_inference"]["curve"]["16"] < k for r, k in zip((*half, every), knn))  # "closes on none"
    assert sum(mine > a["rule_inference"]["curve"]["16"] for mine, a in zip(rule, alone)) == 2  # "narrows on two of three"
    readme = (root / "benchmarks" / "README.md").read_text()
    for r in (*half, every):  # the benchmark's own table, row by row
        a, ri, hf = text_only[str(r["seed"])], r["rule_inference"], r["heldout_format"]
        row = (f"| {r['p_attribute']} | {r['seed']} | {r['lm_words_curve']['16']:.2f} | "
               f"{a['rule_inference']['curve']['16']:.2f} -> {ri['curve']['16']:.2f} | {ri['knn_curve']['16']:.2f} | "
               f"{ri['head_ablated_curve']['16']:.2f} | {hf['curve']['16']:.2f} | {hf['knn_curve']['16']:.2f} | "
               f"{r['seconds']:.0f} s |")
        assert row in readme, row