"""The contrastively pretrained vision encoder: the loss, the encoders, the pretraining, the committed weights, and
the tiny Flamingo's default switch to them."""
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from flamingo_lite.tiny.contrastive import (
    CLASSES, MAX_LOG_TEMPERATURE, MIN_LOG_TEMPERATURE, WEIGHTS, CaptionEncoder, ConvVisionEncoder, class_embeddings,
    contrastive_loss, draw_pairs, load_encoders, pretrain_vision, retrieval_recall, streams, zero_shot_accuracy,
)
from flamingo_lite.tiny.model import Flamingo, FlamingoConfig
from flamingo_lite.tiny.vision import VisionEncoder

ROOT = Path(__file__).resolve().parents[1]
# The command trains in float64, so another CPU moves the stored float32 weights only a little. Measured on one AMD
# EPYC: 1.5e-11 between PyTorch's AVX-512 and AVX2 kernels, 5.2e-5 against its kernels without SIMD
# (ATEN_CPU_CAPABILITY=default: exp and log round differently, and 1500 Adam steps grow that). 1e-3 leaves a margin
# of 20 over the largest, while a change of seed or recipe moves the weights by ~1e-1
# (test_pretraining_is_deterministic_from_its_seed shows another seed is far off).
WEIGHT_TOL = 1e-3


def loop_loss(image, text, log_temperature):
    """The two-term loss written out pair by pair, as the paper's Appendix B.1.3 writes it (mean of the two terms)."""
    t = math.exp(min(max(log_temperature, MIN_LOG_TEMPERATURE), MAX_LOG_TEMPERATURE))
    v = [x / x.norm() for x in image.double()]
    w = [x / x.norm() for x in text.double()]
    n = len(v)
    i2t = t2i = 0.0
    for i in range(n):
        i2t -= math.log(math.exp(float(v[i] @ w[i]) / t) / sum(math.exp(float(v[i] @ w[j]) / t) for j in range(n)))
        t2i -= math.log(math.exp(float(w[i] @ v[i]) / t) / sum(math.exp(float(w[i] @ v[j]) / t) for j in range(n)))
    return (i2t / n + t2i / n) / 2


@pytest.mark.parametrize("log_t", [math.log(0.07), math.log(0.5), -9.0, 2.0])
def test_the_loss_matches_a_direct_computation(log_t):
    g = torch.Generator().manual_seed(0)
    image, text = torch.randn(7, 5, generator=g), torch.randn(7, 5, generator=g)
    got = contrastive_loss(image, text, torch.tensor(log_t))
    assert float(got) == pytest.approx(loop_loss(image, text, log_t), rel=1e-5)


def test_the_loss_is_symmetric_and_labels_are_on_the_diagonal():
    g = torch.Generator().manual_seed(1)
    image, text = torch.randn(6, 4, generator=g), torch.randn(6, 4, generator=g)
    log_t = torch.tensor(math.log(0.1))
    assert torch.allclose(contrastive_loss(image, text, log_t), contrastive_loss(text, image, log_t))
    # matching pairs (text = image) score far better than the same pairs shuffled
    assert contrastive_loss(image, image.clone(), log_t) < contrastive_loss(image, image.roll(1, dims=0), log_t) - 1.0
    # the scale of an embedding does not matter: features are L2-normalised
    assert torch.allclose(contrastive_loss(3 * image, 0.2 * text, log_t), contrastive_loss(image, text, log_t))


def test_the_temperature_is_clamped_and_learned():
    g = torch.Generator().manual_seed(2)
    image, text = torch.randn(5, 4, generator=g), torch.randn(5, 4, generator=g)
    at_min = contrastive_loss(image, text, torch.tensor(MIN_LOG_TEMPERATURE))
    assert torch.allclose(contrastive_loss(image, text, torch.tensor(MIN_LOG_TEMPERATURE - 5)), at_min)  # 1/T <= 100
    assert torch.allclose(contrastive_loss(image, text, torch.tensor(3.0)), contrastive_loss(image, text, torch.tensor(0.0)))
    log_t = torch.tensor(math.log(0.07), requires_grad=True)
    contrastive_loss(image, text, log_t).backward()
    assert log_t.grad is not None and float(log_t.grad.abs()) > 1e-4


def test_the_loss_refuses_bad_input_naming_the_argument():
    e = torch.randn(4, 8)
    with pytest.raises(ValueError, match=r"image_emb and text_emb .*\(4, 8\) and \(3, 8\)"):
        contrastive_loss(e, torch.randn(3, 8), torch.tensor(0.0))
    with pytest.raises(ValueError, match=r"text_emb must have rank 2"):
        contrastive_loss(e, torch.randn(4, 8, 1), torch.tensor(0.0))
    with pytest.raises(TypeError, match="log_temperature"):
        contrastive_loss(e, e, 0.07)


def test_the_encoder_gives_the_grid_the_handmade_one_gives():
    enc, hand = ConvVisionEncoder(), VisionEncoder(dim=64, pool=8)
    for images in (torch.rand(3, 3, 16, 16), torch.rand(2, 5, 3, 16, 16)):
        assert enc(images).shape == hand(images).shape
    assert enc(torch.rand(2, 5, 3, 16, 16)).shape == (2, 5, 4, 64)  # 2x2 cells of 8x8 pixels
    assert enc.embed(torch.rand(3, 3, 16, 16)).shape == (3, 32)
    grid = enc(torch.rand(2, 3, 16, 16))
    assert torch.allclose(grid.mean(-1), torch.zeros(2, 1, 4), atol=1e-5)  # LayerNorm on the output


@pytest.mark.parametrize(
    "images, error, message",
    [
        ([[0.0]], TypeError, r"images must be a torch.Tensor"),
        (torch.rand(3, 16, 16), ValueError, r"images must have rank 4 or 5.*\(3, 16, 16\)"),
        (torch.rand(2, 1, 16, 16), ValueError, r"3 colour channels.*\(2, 1, 1, 16, 16\)"),
        (torch.rand(2, 3, 4, 4), ValueError, r"at least pool=8 pixels.*\(2, 1, 3, 4, 4\)"),
        (torch.zeros(2, 3, 16, 16, dtype=torch.long), TypeError, r"images must be a floating-point tensor"),
    ],
)
def test_the_encoder_refuses_bad_images_naming_the_argument_and_the_shape(images, error, message):
    with pytest.raises(error, match=message):
        ConvVisionEncoder()(images)


def test_bad_sizes_and_captions_are_refused():
    with pytest.raises(ValueError, match="pool must be even"):
        ConvVisionEncoder(pool=5)
    with pytest.raises(TypeError, match="dim must be an int"):
        ConvVisionEncoder(dim=6.5)
    text = CaptionEncoder()
    with pytest.raises(TypeError, match=r"tokens must be a long tensor of shape \(batch, words\)"):
        text(torch.zeros(2, 3))
    with pytest.raises(ValueError, match=r"ids in \[0, 12\)"):
        text(torch.tensor([[3, 40]]))
    with pytest.raises(ValueError, match="padding only"):
        text(torch.tensor([[3, 4], [0, 0]]))


def test_a_batch_holds_each_class_once():
    train_rng, heldout_rng = streams(0)
    batch = draw_pairs(train_rng)
    assert sorted(batch["labels"].tolist()) == list(range(len(CLASSES)))  # distinct: the diagonal is the only match
    assert batch["images"].shape == (12, 3, 16, 16) and batch["tokens"].shape == (12, 4)
    assert not torch.equal(draw_pairs(heldout_rng)["images"], batch["images"])  # held-out: its own stream


def test_pretraining_is_deterministic_from_its_seed():
    v1, t1, h1 = pretrain_vision(seed=3, steps=20)
    v2, t2, h2 = pretrain_vision(seed=3, steps=20)
    v3, _, _ = pretrain_vision(seed=4, steps=20)
    assert h1["loss"] == h2["loss"]
    for name, w in v1.state_dict().items():
        assert torch.equal(w, v2.state_dict()[name]), name
    assert all(torch.equal(w, t2.state_dict()[k]) for k, w in t1.state_dict().items())
    assert max(float((w - v3.state_dict()[k]).abs().max()) for k, w in v1.state_dict().items()) > 100 * WEIGHT_TOL
    assert h1["loss"][-1] < h1["loss"][0]  # it learns


@pytest.fixture(scope="module")
def made_by_the_command(tmp_path_factory):
    """The documented command, run as a learner would run it."""
    out = tmp_path_factory.mktemp("weights") / "vision_encoder.pt"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    run = subprocess.run(
        [sys.executable, "-m", "flamingo_lite.tiny.contrastive", "--out", str(out), "--seed", "0"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )
    assert run.returncode == 0, run.stderr
    assert "zero-shot accuracy" in run.stdout
    return out


def test_the_committed_weights_are_what_the_command_makes(made_by_the_command):
    made, committed = torch.load(made_by_the_command, weights_only=True), torch.load(WEIGHTS, weights_only=True)
    assert made["config"] == committed["config"]
    for part in ("vision", "text"):
        assert made[part].keys() == committed[part].keys()
        for name, w in committed[part].items():
            torch.testing.assert_close(made[part][name], w, rtol=0, atol=WEIGHT_TOL, msg=f"{part}.{name}")
    assert WEIGHTS.stat().st_size < 200_000  # small enough to commit


def test_zero_shot_and_retrieval_on_held_out_pictures(made_by_the_command):
    for path in (made_by_the_command, WEIGHTS):
        vision, text, _ = load_encoders(path)
        assert zero_shot_accuracy(vision, text, seed=0) >= 0.95
        recall = retrieval_recall(vision, text, seed=0)
        assert recall["image_to_text"] >= 0.95 and recall["text_to_image"] >= 0.95, recall


def test_an_untrained_encoder_does_not_classify():
    vision, text = ConvVisionEncoder(seed=0).eval(), CaptionEncoder(seed=0).eval()
    assert zero_shot_accuracy(vision, text, seed=0, num_batches=10) < 0.5  # the accuracy above is learned
    assert class_embeddings(text).shape == (12, 32)


def test_the_command_checks_its_output_path_before_training(tmp_path):
    run = subprocess.run(
        [sys.executable, "-m", "flamingo_lite.tiny.contrastive", "--out", str(tmp_path)],
        cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True, timeout=60,
    )
    assert run.returncode == 2 and "is a folder" in run.stderr


def test_flamingo_uses_the_pretrained_frozen_encoder_by_default():
    model = Flamingo()
    assert FlamingoConfig().vision == "pretrained" and isinstance(model.vision, ConvVisionEncoder)
    committed, _, _ = load_encoders()
    for name, w in committed.state_dict().items():
        assert torch.equal(model.vision.state_dict()[name], w), name
    assert model.parameter_counts()["parts"]["vision"]["trainable"] == 0
    assert isinstance(Flamingo(FlamingoConfig(vision="handmade")).vision, VisionEncoder)
    random = Flamingo(FlamingoConfig(vision="random")).vision
    assert isinstance(random, ConvVisionEncoder) and not torch.equal(random.proj.weight, committed.proj.weight)
    trainable = Flamingo(FlamingoConfig(vision="pretrained", vision_frozen=False))
    assert trainable.parameter_counts()["parts"]["vision"]["frozen"] == 0


def test_the_rest_of_the_model_keeps_its_state_dict_keys():
    def others(model):
        return sorted(k for k in model.state_dict() if not k.startswith("vision."))

    torch.manual_seed(0)
    handmade = Flamingo(FlamingoConfig(vision="handmade"))
    assert others(Flamingo()) == others(handmade) == others(Flamingo(FlamingoConfig(vision="random")))
    data = torch.rand(2, 2, 3, 16, 16)
    tokens = torch.tensor([[1, 3, 5, 8, 2, 1, 3, 6, 9, 2]] * 2)
    assert Flamingo()(tokens, data).shape == (2, 10, 12)


def test_bad_vision_choices_are_refused():
    with pytest.raises(ValueError, match="vision must be one of"):
        Flamingo(FlamingoConfig(vision="clip"))
    with pytest.raises(ValueError, match=r"pretrained vision encoder has dim=64.*dim=32.*vision='handmade'"):
        Flamingo(FlamingoConfig(dim=32))


def test_the_captioning_command_line_chooses_the_encoder():
    from flamingo_lite.tiny.train import build_parser

    parser = build_parser()
    assert parser.parse_args(["--out", "h.json"]).vision == "pretrained"
    assert parser.parse_args(["--out", "h.json", "--vision", "handmade"]).vision == "handmade"
    with pytest.raises(SystemExit) as exit_info:
        parser.parse_args(["--out", "h.json", "--vision", "clip"])
    assert exit_info.value.code == 2
