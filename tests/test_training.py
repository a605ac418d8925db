"""Training: the loss, the gate log (step 0 first, gates at exactly 0), greedy captioning, evaluation."""
import math

import pytest
import torch

from flamingo_lite.tiny.data import Tokenizer, make_dataset
from flamingo_lite.tiny.language_model import TinyLM
from flamingo_lite.tiny.model import Flamingo, FlamingoConfig
from flamingo_lite.tiny.training import (
    TrainingSetup, caption_images, caption_prompts, evaluate_captions, generate, next_token_loss, run_training,
    train_flamingo, train_language_model,
)

TINY = dict(dim=32, dim_head=8, heads=2, lm_depth=2, lm_heads=2, num_latents=4, resampler_depth=1, vision="handmade")


@pytest.fixture(scope="module")
def data():
    return make_dataset(64, seed=2)


def test_next_token_loss_ignores_padding():
    tokens = torch.tensor([[1, 3, 5, 0, 0]])
    logits = torch.zeros(1, 5, 12)
    assert math.isclose(float(next_token_loss(logits, tokens)), math.log(12), rel_tol=1e-6)
    logits[0, 0, 3] = logits[0, 1, 5] = 100.0  # both real targets predicted with certainty
    logits[0, 2:, 7] = 100.0  # predictions of padding are wrong but must not count
    assert float(next_token_loss(logits, tokens)) < 1e-6


def test_language_model_learns_the_grammar(data):
    torch.manual_seed(0)
    lm = TinyLM(FlamingoConfig(**TINY).lm_config())
    losses = train_language_model(lm, data, steps=15, batch_size=16, lr=2e-2, progress=False)
    assert len(losses) == 15 and losses[-1] < 0.6 * losses[0]
    assert all(not p.grad is None for p in lm.parameters())


def test_history_logs_step_zero_with_closed_gates(data):
    torch.manual_seed(0)
    model = Flamingo(FlamingoConfig(**TINY))
    frozen_before = {k: v.clone() for k, v in model.lm.state_dict().items()}
    history = train_flamingo(model, data, steps=7, batch_size=16, log_every=3, progress=False)
    assert history["step"] == [0, 3, 6, 7]
    assert len(history["loss"]) == 4 and len(history["loss_every_step"]) == 7
    assert history["attn_gate_tanh"][0] == [0.0, 0.0] and history["ff_gate_tanh"][0] == [0.0, 0.0]
    assert all(len(g) == 2 for g in history["attn_gate_tanh"])
    assert all(abs(g) > 0 for g in history["attn_gate_tanh"][-1])  # the first update moves every gate
    assert history["attn_gate_tanh"][-1] == model.gates()["attn"]
    for k, v in model.lm.state_dict().items():
        assert torch.equal(v, frozen_before[k]), k  # the language model stayed frozen


def test_step_zero_loss_is_the_frozen_lm_loss(data):
    torch.manual_seed(0)
    model = Flamingo(FlamingoConfig(**TINY))
    history = train_flamingo(model, data, steps=1, batch_size=len(data), progress=False)
    # one batch of all the data, in the shuffled order: the loss does not depend on the order
    lm_loss = float(next_token_loss(model.lm(data.tokens), data.tokens))
    assert math.isclose(history["loss"][0], lm_loss, rel_tol=1e-5)


def test_generate_matches_step_by_step_argmax(data):
    torch.manual_seed(0)
    model = Flamingo(FlamingoConfig(**TINY)).eval()
    tok = Tokenizer()
    lengths = [1, 5]
    new = generate(model, data.tokens[:2].clone(), data.images[:2], lengths, max_new_tokens=3)
    for row, n in enumerate(lengths):
        seq = data.tokens[row, :n].tolist()
        for _ in range(3):
            ids = torch.tensor([seq])
            nid = int(model(ids, data.images[row : row + 1])[0, -1].argmax())
            seq.append(nid)
            if nid == tok.media_id:
                break
        assert new[row] == seq[n:]


def test_evaluation_and_captioning_shapes(data):
    torch.manual_seed(0)
    model = Flamingo(FlamingoConfig(**TINY)).eval()
    tok = Tokenizer()
    sub = data[:5]
    triples = caption_prompts(sub, tok)
    assert len(triples) == int(sub.num_images.sum())
    assert all(sub.tokens[s, n - 1] == tok.media_id for s, _, n in triples)
    scores = evaluate_captions(model, sub, tok)
    assert 0.0 <= scores["caption_accuracy"] <= 1.0 and len(scores["captions"]) == len(triples)
    caps = caption_images(model, sub.images[0, :1])
    assert len(caps) == 1 and isinstance(caps[0], str)
    ctx = "<image> a circle in red <eoc>"
    caps = caption_images(model, sub.images[:2, 0], context=ctx, context_images=sub.images[0, :1])
    assert len(caps) == 2
    with pytest.raises(ValueError, match="context_images"):
        caption_images(model, sub.images[:2, 0], context=ctx)


def test_run_training_end_to_end_tiny():
    setup = TrainingSetup(steps=4, lm_steps=3, num_train=40, num_heldout=5, log_every=2, batch_size=8)
    model, history = run_training(setup, FlamingoConfig(**TINY), progress=False)
    for key in ("loss", "attn_gate_tanh", "ff_gate_tanh", "heldout_caption_accuracy", "seconds", "config"):
        assert key in history
    assert history["step"] == [0, 2, 4] and len(history["lm_loss"]) == 3
    assert history["config"]["model"]["dim"] == 32 and history["config"]["xattn_layers"] == [0, 1]
    assert 0.0 <= history["heldout_caption_accuracy"] <= 1.0
