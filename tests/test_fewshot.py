"""The few-shot task: its data's invariants and determinism, the prompt builder, the scorer, the curve's keys,
the token shift, and the command line (tiny step counts)."""
import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from flamingo_lite.masks import MEDIA_TOKEN
from flamingo_lite.tiny import fewshot as fs
from flamingo_lite.tiny.language_model import LMConfig, TinyLM

TOK = fs.fewshot_tokenizer()


def test_names_are_single_tokens_and_not_picture_words():
    for name in fs.NAMES:
        assert TOK.encode([name]) == [TOK.index[name]]
        assert all(name not in c for c in fs.CLASSES)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_training_data_invariants(seed):
    data = fs.make_training_data(200, seed=seed, max_shots=8)
    assert data.num_images.max() <= 5 and data.images.shape[1] == 5
    for i in range(len(data)):
        words = TOK.words(data.tokens[i])
        k = int(data.num_images[i])
        assert words.count(MEDIA_TOKEN) == k == int(data.media_locations[i].sum())
        assert words[-1] == fs.EOC_TOKEN
        assert data.images[i, k:].abs().sum() == 0 and bool((data.images[i, :k].flatten(1).abs().sum(1) > 0).all())
        if data.kinds[i] == "episode":
            assert words[-4:-2] == [MEDIA_TOKEN, fs.IS] and words[-2] in fs.NAMES  # the query is a picture
    # text may precede the first image in some episodes (it sees no image)
    assert any(data.kinds[i] == "episode" and TOK.words(data.tokens[i])[0] != MEDIA_TOKEN for i in range(len(data)))


def test_assignments_are_uniform_so_no_pair_is_unlikely():
    rng = np.random.default_rng(0)
    counts = np.zeros((len(fs.CLASSES), len(fs.NAMES)))
    for _ in range(4000):
        names = fs.draw_assignment(rng)
        assert len(set(names)) == len(fs.CLASSES) and all(0 <= n < len(fs.NAMES) for n in names)
        counts[np.arange(len(fs.CLASSES)), names] += 1
    expected = 4000 / len(fs.NAMES)  # 250 per class-name pair
    assert counts.min() > 0.75 * expected and counts.max() < 1.25 * expected  # about 8 standard errors apart


def test_evaluation_assignments_never_occur_in_training():
    train = fs.make_training_data(2000, seed=0, max_shots=4, p_caption=0.3)
    seen = {a for a in train.assignments if a is not None}
    assert len(seen) == sum(k == "episode" for k in train.kinds)  # each episode binds names afresh
    assert all(a is None for a, k in zip(train.assignments, train.kinds) if k == "caption")
    episodes = fs.make_heldout_episodes(300, seed=0, pool_size=4)
    assert not {tuple(ep.names) for ep in episodes} & seen


def test_names_are_bound_consistently_within_a_sequence():
    data = fs.make_training_data(100, seed=4, max_shots=12, p_caption=0.0, text_only=True)
    for i in range(len(data)):
        words, bound = TOK.words(data.tokens[i]), {}
        for j, w in enumerate(words):
            if w in fs.NAMES:
                cls = (words[j - 3], words[j - 2])
                assert bound.setdefault(cls, w) == w
        assert len(set(bound.values())) == len(bound)


def test_text_only_data_has_no_pictures_and_same_episode_shape():
    data = fs.make_training_data(50, seed=5, max_shots=8, text_only=True)
    assert data.num_images.sum() == 0 and not data.media_locations.any() and data.images.abs().sum() == 0


def test_p_next_moves_markers_before_their_pictures():
    data = fs.make_training_data(60, seed=6, max_shots=8, p_next=1.0)
    for i in range(len(data)):
        media = (data.tokens[i] == TOK.media_id).nonzero().flatten().tolist()
        marks = data.media_locations[i].nonzero().flatten().tolist()
        assert len(marks) == len(media)
        assert marks[0] == 0 and all(m <= p for m, p in zip(marks, media))
        assert all(m == p + 1 for m, p in zip(marks[1:], media[:-1]))


def test_data_is_deterministic_and_seeds_differ():
    a, b, c = (fs.make_training_data(40, seed=s, max_shots=8) for s in (7, 7, 8))
    assert torch.equal(a.tokens, b.tokens) and torch.equal(a.images, b.images)
    assert not torch.equal(a.tokens[:, :10], c.tokens[:, :10])
    e1, e2 = fs.make_heldout_episodes(5, seed=1, pool_size=8), fs.make_heldout_episodes(5, seed=1, pool_size=8)
    assert all(torch.equal(x.pool_images, y.pool_images) and x.names == y.names for x, y in zip(e1, e2))


def test_heldout_episodes_use_new_pictures():
    episodes = fs.make_heldout_episodes(20, seed=0, pool_size=8)
    for ep in episodes:
        assert len(set(ep.names)) == len(fs.CLASSES)
    train = fs.make_training_data(200, seed=0, max_shots=4)
    pictures = train.images.flatten(2)[train.images.flatten(2).abs().sum(-1) > 0]  # (P, 3*H*W)
    query = episodes[0].query_image.flatten()
    assert not bool((pictures == query).all(-1).any())


def test_build_prompt_writes_each_support_picture_then_the_query():
    names = list(range(12))
    ids = fs.build_prompt([0, 5], names, TOK)
    assert TOK.words(ids) == [MEDIA_TOKEN, "is", fs.NAMES[0], "<eoc>", MEDIA_TOKEN, "is", fs.NAMES[5], "<eoc>", MEDIA_TOKEN, "is"]
    assert TOK.words(fs.build_prompt([], names, TOK)) == [MEDIA_TOKEN, "is"]


def test_score_candidates_is_log_softmax_at_the_candidates():
    logits = torch.tensor([[0.0, 1.0, 2.0, 3.0], [3.0, 0.0, 0.0, 0.0]])
    got = fs.score_candidates(logits, [3, 0])
    torch.testing.assert_close(got, logits.log_softmax(-1)[:, [3, 0]])
    assert got.argmax(-1).tolist() == [0, 1]
    with pytest.raises(ValueError, match="logits_last"):
        fs.score_candidates(logits[0], [0])


def test_rices_picks_the_nearest_pictures_last():
    ep = fs.make_heldout_episodes(1, seed=2, pool_size=6)[0]
    features = torch.tensor([[1.0, 0], [0, 1.0], [0.9, 0.1], [-1.0, 0], [0.5, 0.5], [0.99, 0.01], [1.0, 0.0]])  # pool, then query
    assert fs.choose_support(ep, 3, retrieval="rices", features=features) == [2, 5, 0]
    with pytest.raises(ValueError, match="retrieval"):
        fs.choose_support(ep, 1, retrieval="nearest")


def test_token_shift_is_causal_and_off_by_default():
    assert not any("shift" in k for k in TinyLM(LMConfig()).state_dict())
    torch.manual_seed(0)
    lm = TinyLM(LMConfig(vocab_size=20, max_len=12, token_shift=4)).eval()
    x = torch.randint(0, 20, (2, 12))
    y = x.clone()
    y[:, 7:] = (y[:, 7:] + 1) % 20
    assert torch.equal(lm(x)[:, :7], lm(y)[:, :7]) and not torch.equal(lm(x)[:, 7:], lm(y)[:, 7:])
    with pytest.raises(ValueError, match="token_shift"):
        TinyLM(LMConfig(token_shift=-1))


def test_positions_none_has_no_position_embedding_and_reads_any_length():
    assert "pos_emb.weight" in TinyLM(LMConfig()).state_dict()
    torch.manual_seed(0)
    lm = TinyLM(LMConfig(vocab_size=20, max_len=40, token_shift=4, positions="none")).eval()
    assert not any("pos_emb" in k for k in lm.state_dict())
    x = torch.randint(0, 20, (2, 8))
    shifted = torch.cat([torch.randint(0, 20, (2, 30)), x], dim=1)  # the same 8 tokens after 30 others
    # no position signal: the last token's logits depend only on what it reads, and a prefix changes them, not its length
    assert lm(x).shape == (2, 8, 20) and lm(shifted).shape == (2, 38, 20)
    with pytest.raises(ValueError, match="LMConfig.positions"):
        TinyLM(LMConfig(positions="rotary"))


def test_cached_generation_matches_with_the_token_shift_and_no_positions():
    from flamingo_lite.tiny.generation import generate

    torch.manual_seed(0)
    setup = fs.FewShotSetup(max_images=3)
    lm = TinyLM(LMConfig(vocab_size=len(TOK), max_len=30, token_shift=4, positions="none"))
    model = fs.build_model(setup, lm, TOK).eval()
    ep = fs.make_heldout_episodes(1, seed=0, pool_size=4)[0]
    prompt = torch.tensor([fs.build_prompt(ep.pool_classes[:2], ep.names, TOK)])  # (1, 10)
    images = torch.cat([ep.pool_images[:2], ep.query_image[None]])[None]  # (1, 3, 3, H, W)
    cached = generate(model, prompt, images, max_new_tokens=4, eoc_id=None, use_cache=True)
    plain = generate(model, prompt, images, max_new_tokens=4, eoc_id=None, use_cache=False)
    assert torch.equal(cached, plain)
    beams = [generate(model, prompt, images, max_new_tokens=4, eoc_id=None, num_beams=3, use_cache=c) for c in (True, False)]
    assert torch.equal(beams[0], beams[1])  # the token shift's rows follow the beams


def test_bucketed_batches_cover_each_epoch_and_group_similar_lengths():
    from flamingo_lite.tiny.training import batches

    lengths = torch.randint(1, 200, (640,))
    plain = list(batches(640, 32, 20, torch.Generator().manual_seed(0)))
    bucketed = list(batches(640, 32, 20, torch.Generator().manual_seed(0), lengths))
    assert sorted(torch.cat(bucketed).tolist()) == list(range(640))  # one epoch: every item once
    spread = lambda bs: float(np.mean([int(lengths[b].max() - lengths[b].min()) for b in bs]))
    assert spread(bucketed) < 0.25 * spread(plain)


def test_bucketing_trims_padding_without_changing_the_loss():
    from flamingo_lite.tiny.training import next_token_loss

    torch.manual_seed(0)
    data = fs.make_training_data(16, seed=0, max_shots=8, tokenizer=TOK)
    lm = TinyLM(LMConfig(vocab_size=len(TOK), max_len=data.tokens.shape[1], token_shift=4, positions="none")).eval()
    lengths = (data.tokens != TOK.pad_id).sum(1)  # (16,)
    short = data.tokens[torch.argsort(lengths)[:4]]  # (4, n): the four shortest, padded to the longest of all
    n = int(lengths.sort().values[3])
    assert n < short.shape[1]
    padded = next_token_loss(lm(short), short, TOK.pad_id)
    trimmed = next_token_loss(lm(short[:, :n]), short[:, :n], TOK.pad_id)
    torch.testing.assert_close(trimmed, padded)


def test_run_fewshot_returns_the_curve_keys():
    setup = fs.FewShotSetup(lm_steps=2, steps=2, num_train=64, num_heldout=8, max_shots=4, shots=(0, 1, 4), log_every=1)
    _, history = fs.run_fewshot(setup, progress=False)
    assert set(history["shots_curve"]) == {"0", "1", "4"}
    assert all(0.0 <= v <= 1.0 for v in history["shots_curve"].values())
    assert history["chance"] == pytest.approx(1 / 16)
    assert set(history["rices_curve"]) == {"1", "4"} and set(history["text_only_lm_curve"]) == {"0", "1", "4"}
    assert history["in_support_fraction"]["0"] == 0.0 and history["in_support_accuracy"]["0"] is None
    assert len(history["attn_gate_tanh"]) == 3 and history["attn_gate_tanh"][0] == [0.0, 0.0]
    per_media = fs.FewShotSetup(**{**setup.__dict__, "media_embedding": "per_media", "max_images": 2})
    _, capped = fs.run_fewshot(per_media, progress=False)
    assert capped["shots_curve"]["4"] is None and capped["shots_curve"]["1"] is not None


def test_command_line_writes_the_shots_curve_and_the_model(tmp_path):
    out, saved = tmp_path / "fewshot.json", tmp_path / "models" / "fewshot.pt"
    subprocess.run(
        [sys.executable, "-m", "flamingo_lite.train", "--task", "fewshot", "--out", str(out), "--steps", "2", "--lm-steps", "2",
         "--shots", "0,1", "--threads", "1", "--no-progress", "--save-model", str(saved)],
        check=True, capture_output=True, text=True, timeout=300,
    )
    history = json.loads(out.read_text())
    assert set(history["shots_curve"]) == {"0", "1"} and "chance" in history and "seconds" in history
    assert history["config"]["fewshot"]["steps"] == 2 and len(history["attn_gate_tanh"]) >= 2
    model, setup = fs.load_model(saved)
    assert setup.steps == 2 and setup.shots == (0, 1) and not model.training
    episodes = fs.make_heldout_episodes(history["config"]["fewshot"]["num_heldout"], seed=setup.seed)
    again = fs.evaluate_shots(model, episodes, 1, TOK)["scoring"]
    assert again == pytest.approx(history["shots_curve"]["1"])  # the saved model is the evaluated one


def test_save_model_is_refused_before_work_when_it_cannot_be_written(tmp_path):
    for extra, match in ((["--save-model", str(tmp_path)], "--save-model"), (["--task", "caption", "--save-model", str(tmp_path / "m.pt")], "--task fewshot")):
        args = ["--out", str(tmp_path / "h.json")] + (extra if "--task" in extra else ["--task", "fewshot"] + extra)
        run = subprocess.run([sys.executable, "-m", "flamingo_lite.train", *args], capture_output=True, text=True, timeout=120)
        assert run.returncode == 2 and match in run.stderr
        assert not (tmp_path / "h.json").exists()


def test_cached_vision_features_train_the_same_model():
    from flamingo_lite.tiny.training import train_flamingo

    data = fs.make_training_data(64, seed=0, max_shots=6, tokenizer=TOK)
    runs = []
    for cache in (False, True):
        torch.manual_seed(0)
        lm = TinyLM(LMConfig(vocab_size=len(TOK), max_len=data.tokens.shape[1], token_shift=4, positions="none"))
        model = fs.build_model(fs.FewShotSetup(), lm, TOK)
        history = train_flamingo(model, data, steps=3, batch_size=8, log_every=1, progress=False, pad_id=TOK.pad_id, cache_vision=cache)
        runs.append((history["loss_every_step"], model.resampler.latents.detach().clone()))
    assert runs[0][0] == pytest.approx(runs[1][0], rel=1e-5)
    torch.testing.assert_close(runs[0][1], runs[1][1], atol=1e-5, rtol=1e-4)
    model.vision.requires_grad_(True)
    with pytest.raises(ValueError, match="cache_vision"):
        train_flamingo(model, data, steps=1, progress=False, pad_id=TOK.pad_id, cache_vision=True)


def test_evaluation_with_shared_vision_grids_matches_running_the_model_on_pictures():
    torch.manual_seed(0)
    lm = TinyLM(LMConfig(vocab_size=len(TOK), max_len=40, token_shift=4, positions="none"))
    model = fs.build_model(fs.FewShotSetup(), lm, TOK).eval()
    with torch.no_grad():
        for block in model.xattn.values():
            block.attn_gate.fill_(1.0), block.ff_gate.fill_(1.0)  # open, so the pictures matter
    episodes = fs.make_heldout_episodes(12, seed=3, pool_size=8)
    got = fs.evaluate_shots(model, episodes, 3, TOK)
    rng = np.random.default_rng([0, 3])
    right = []
    for ep in episodes:
        chosen = fs.choose_support(ep, 3, rng=rng)
        tokens = torch.tensor([fs.build_prompt([ep.pool_classes[i] for i in chosen], ep.names, TOK)])
        images = torch.cat([ep.pool_images[chosen], ep.query_image[None]])[None]
        with torch.no_grad():
            scores = fs.score_candidates(model(tokens, images)[:, -1], [TOK.index[n] for n in fs.NAMES])
        right.append(int(scores.argmax()) == ep.names[ep.query_class])
    assert got["scoring"] == pytest.approx(float(np.mean(right)))
    with pytest.raises(ValueError, match="retrieval must be 'random'"):
        fs.evaluate_shots(model.lm, episodes, 1, TOK, lm_only=True, retrieval="rices")


def test_a_generated_image_token_is_not_a_picture():
    torch.manual_seed(0)
    lm = TinyLM(LMConfig(vocab_size=len(TOK), max_len=40, token_shift=4, positions="none"))
    with torch.no_grad():
        lm.lm_head.weight.zero_()
        lm.lm_head.weight[TOK.media_id] = 1.0  # the model writes <image> after every prompt
        lm.ln_f.bias.fill_(1.0)
    model = fs.build_model(fs.FewShotSetup(), lm, TOK).eval()
    result = fs.evaluate_shots(model, fs.make_heldout_episodes(4, seed=0, pool_size=4), 2, TOK)
    assert result["generation"] == 0.0


def test_links_vary_the_template_per_episode_and_keep_it_through_the_episode():
    links = (fs.IS, "in", "")
    data = fs.make_training_data(300, seed=4, max_shots=6, links=links)
    seen = set()
    for i in range(len(data)):
        if data.kinds[i] != "episode":
            continue
        words = [w for w in TOK.words(data.tokens[i]) if w != fs.PAD_TOKEN]
        chunks = " ".join(words).split(f" {fs.EOC_TOKEN}")[:-1]  # one example per chunk
        used = {tuple(c.split()[-2:-1]) if c.split()[-2] in (fs.IS, "in") else () for c in chunks}
        assert len(used) == 1  # one link through the whole episode
        seen |= used
    assert seen == {(fs.IS,), ("in",), ()}
    default = fs.make_training_data(100, seed=1)
    assert torch.equal(default.tokens, fs.make_training_data(100, seed=1, links=(fs.IS,)).tokens)  # no extra draw
    with pytest.raises(ValueError, match="FewShotSetup.links"):
        fs.FewShotSetup(links=("zebra",))
    assert fs.fewshot_tokenizer((fs.IS, "in", "of", "")).vocab == TOK.vocab + ["of"]  # only new words are added, at the end
    with pytest.raises(ValueError, match="links must be a non-empty tuple"):
        fs.make_training_data(4, links=())


def test_articles_draw_a_first_word_per_caption_that_a_link_may_share():
    """With --colliding-links a caption begins with one of `a`, `the`, `one`, `this`, drawn per caption, and those
    three are also links: after `<image> the` a caption follows in one sequence and a name in another."""
    tok = fs.fewshot_tokenizer(fs.COLLIDING_LINKS)
    data = fs.make_training_data(300, seed=4, tokenizer=tok, links=fs.COLLIDING_LINKS, articles=fs.CAPTION_ARTICLES)
    firsts = set()
    for i in range(len(data)):
        if data.kinds[i] == "caption":
            words = [w for w in tok.words(data.tokens[i]) if w != fs.PAD_TOKEN]
            firsts |= {words[j + 1] for j, w in enumerate(words[:-1]) if w == fs.MEDIA_TOKEN}
    assert firsts == set(fs.CAPTION_ARTICLES)  # every article begins some caption, and nothing else does
    assert set(fs.ARTICLES) <= set(fs.COLLIDING_LINKS) and "a" not in fs.COLLIDING_LINKS
    assert torch.equal(fs.make_training_data(100, seed=1).tokens,
                       fs.make_training_data(100, seed=1, articles=("a",)).tokens)  # one article: no extra draw
    with pytest.raises(ValueError, match="FewShotSetup.articles"):
        fs.FewShotSetup(articles=("the",))  # not a link of this setup, so not in its vocabulary
    assert fs.FewShotSetup(links=fs.COLLIDING_LINKS, articles=fs.CAPTION_ARTICLES).articles == fs.CAPTION_ARTICLES
    with pytest.raises(ValueError, match="articles must be a non-empty tuple"):
        fs.make_training_data(4, articles=("",))


def test_attribute_captions_name_one_attribute_per_sequence_and_leave_the_default_data_alone():
    """`p_attribute` (benchmarks/rule_text_lm.py --p-attribute): that share of the caption sequences names one
    attribute of each picture, the same one through the sequence; at 0 no draw is made, so the data are unchanged."""
    from flamingo_lite.tiny.data import COLOURS, SHAPES

    plain, zero = fs.make_training_data(60, seed=3), fs.make_training_data(60, seed=3, p_attribute=0.0)
    assert torch.equal(plain.tokens, zero.tokens) and torch.equal(plain.images, zero.images)
    tok = fs.fewshot_tokenizer()
    data = fs.make_training_data(80, seed=4, p_attribute=1.0, tokenizer=tok)
    kinds = set()
    for i, kind in enumerate(data.kinds):
        if kind != "caption":
            continue
        words = [w for w in tok.words(data.tokens[i]) if w != "<pad>"]
        chunks = " ".join(words).split(" <eoc>")[:-1]
        said = {("colour" if c.split()[-1] in COLOURS else "shape" if c.split()[-1] in SHAPES else "?") for c in chunks}
        assert all(len(c.split()) == 3 for c in chunks), words  # `<image> a red`: one attribute word
        assert len(said) == 1 and "?" not in said, words  # one attribute through the sequence
        kinds |= said
    assert kinds == {"colour", "shape"}
    with pytest.raises(ValueError, match="p_attribute"):
        fs.FewShotSetup(p_attribute=1.5)
    with pytest.raises(ValueError, match="p_attribute"):
        fs.make_training_data(4, p_attribute=-0.1)
