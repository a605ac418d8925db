"""The eyes, trained: a small convolutional image encoder and a caption encoder, pretrained contrastively.

Flamingo's vision encoder is a Normalizer-Free ResNet (NFNet-F6), pretrained with the two-term contrastive loss of
Radford et al. (CLIP) on image-text pairs and then frozen (paper, Sec. 2.1). Appendix B.1.3 gives the recipe: the
vision encoder is trained from scratch together with a language encoder (a BERT architecture); each output is
mean-pooled (over tokens, over spatial positions), projected into a shared embedding space and L2-normalised; the
loss is a multi-class cross-entropy in which the matching pair of a batch is the positive and every other pair of
the batch a negative, once from text to image and once from image to text, the two terms added, with a learned
inverse temperature. Only the vision encoder is kept for Flamingo.

Here the same recipe in miniature, on the course's pictures (`flamingo_lite.tiny.data`: 4 colours x 3 shapes):

- `ConvVisionEncoder`: a stem convolution and two residual blocks in the NF-ResNet spirit (no batch norm; weight-
  standardised convolutions; a residual branch scaled by `alpha`, so the signal keeps its scale without any
  normalisation of activations), GELU, then average pooling to a grid, a 1x1 projection and a LayerNorm. Its
  `forward` is the grid the Perceiver Resampler reads, exactly like the hand-made `VisionEncoder`; its `embed` is
  the pooled, projected vector the contrastive loss reads.
- `CaptionEncoder`: word embeddings, a mean over the words, a projection (a bag of words stands in for BERT: a
  caption here is three or four words, and their order carries no meaning the pictures could check).
- `contrastive_loss`: the symmetric loss, with the temperature clamped as CLIP clamps it (1/T at most 100).

Duplicate classes. There are only 12 classes, so a batch of 64 random pairs would hold each class about five
times: the diagonal labels would then call a picture and a caption of the same class a *negative* pair and push
them apart, against what is true. `pretrain_vision` therefore draws every batch as one picture of each class
(12 pairs, in a random order, each caption in a random format), so each row has exactly one right answer, on the
diagonal. (Soft targets over same-class pairs would allow larger batches; distinct classes keep the loss the one
of the paper.)

Training runs in float64: different CPUs sum in different orders (AVX2 vs AVX-512 kernels) and round exp and log
differently, and in float32 those differences grow over hundreds of Adam steps. In float64 they start about 5 x 10^8
times smaller. Measured on one AMD EPYC, the weights the command writes (`python -m flamingo_lite.tiny.contrastive
--out ...`, stored in float32) agree to 1.5e-11 between PyTorch's AVX-512 and AVX2 kernels and to 5e-5 against its
kernels without SIMD (`ATEN_CPU_CAPABILITY=default`); the test that reruns the command allows 1e-3.

Shapes, in einops notation: b batch, t media, c=3 colour channels, H=W picture size, C conv channels, g grid
cells, d the feature width, e the embedding width, n words, V the vocabulary size.
"""
from __future__ import annotations

import argparse
import io
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from ..files import check_output_path, write_bytes_atomic
from ..validation import check_positive_int, check_tensor, shape_str
from .data import COLOURS, FORMATS, SHAPES, Tokenizer, caption_words, render_shape

CLASSES = tuple((colour, shape) for colour in COLOURS for shape in SHAPES)  # the 12 (colour, shape) pairs
MAX_WORDS = 4  # the longest caption: a circle in red
MIN_LOG_TEMPERATURE = math.log(0.01)  # CLIP clamps its logit scale 1/T to at most 100 ...
MAX_LOG_TEMPERATURE = 0.0  # ... and at least 1 (OpenCLIP: logit_scale.clamp_(0, ln 100))
INIT_LOG_TEMPERATURE = math.log(0.07)  # CLIP's starting temperature
WEIGHTS = Path(__file__).with_name("vision_encoder.pt")  # made by `python -m flamingo_lite.tiny.contrastive`


class WSConv2d(nn.Conv2d):
    """A convolution with weight standardisation (NF-ResNets): each filter has zero mean and unit variance over its
    fan-in, scaled by 1/sqrt(fan-in), so a unit-variance input gives a unit-variance output without batch norm."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight  # (C_out, C_in, k, k)
        fan_in = w[0].numel()
        mean = w.mean(dim=(1, 2, 3), keepdim=True)  # (C_out, 1, 1, 1)
        var = w.var(dim=(1, 2, 3), keepdim=True, unbiased=False)  # (C_out, 1, 1, 1)
        w = (w - mean) / torch.sqrt(var * fan_in + 1e-4)  # (C_out, C_in, k, k)
        return F.conv2d(x, w, self.bias, self.stride, self.padding)  # (B, C_out, H, W)


class NFBlock(nn.Module):
    """x + alpha * conv(gelu(conv(gelu(x)))): a residual block without normalisation of activations."""

    def __init__(self, channels: int, alpha: float = 0.2):
        super().__init__()
        self.alpha = alpha  # small, so each block changes the signal a little and its variance grows slowly
        self.conv1 = WSConv2d(channels, channels, 3, padding=1)
        self.conv2 = WSConv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.gelu(x))  # (B, C, H, W)
        h = self.conv2(F.gelu(h))  # (B, C, H, W)
        return x + self.alpha * h  # (B, C, H, W)


def check_images(images, pool: int) -> torch.Tensor:
    """(b, 3, H, W) or (b, t, 3, H, W) floats, at least `pool` pixels wide -> (b, t, 3, H, W); errors name the shapes."""
    check_tensor("images", images, ndim=(4, 5), layout="(batch, media, 3, height, width) or (batch, 3, height, width)")
    if images.ndim == 4:
        images = rearrange(images, "b c h w -> b 1 c h w")  # (b, 1, 3, H, W): one picture each
    if images.shape[2] != 3:
        raise ValueError(f"images must have 3 colour channels in axis 2, shape (batch, media, 3, H, W); got {tuple(images.shape)}")
    if images.shape[-1] < pool or images.shape[-2] < pool:
        raise ValueError(f"images must be at least pool={pool} pixels high and wide, got {tuple(images.shape)}")
    return images


class ConvVisionEncoder(nn.Module):
    """Stem conv (stride 2) -> 2 NF residual blocks -> GELU -> average pool to a grid -> 1x1 projection -> LayerNorm.

    forward(images (b, t, 3, H, W) or (b, 3, H, W)) -> (b, t, g, d), g = (H // pool) * (W // pool): the grid for the
    resampler, as `flamingo_lite.tiny.vision.VisionEncoder` gives it. embed(images (b, 3, H, W)) -> (b, e): the mean
    of the grid, projected, for the contrastive loss. Weights are drawn from `seed` (the caller's random stream stays
    untouched).
    """

    def __init__(self, *, dim: int = 64, pool: int = 8, channels: int = 16, embed_dim: int = 32, depth: int = 2, seed: int = 0):
        super().__init__()
        self.dim = check_positive_int("dim", dim)
        self.pool = check_positive_int("pool", pool)
        if pool % 2:
            raise ValueError(f"pool must be even (the stem halves the resolution, so a cell is pool/2 feature pixels), got {pool}")
        check_positive_int("channels", channels)
        check_positive_int("embed_dim", embed_dim)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.stem = WSConv2d(3, channels, 3, stride=2, padding=1)  # halves the resolution, as a ResNet stem does
            self.blocks = nn.Sequential(*[NFBlock(channels) for _ in range(depth)])
            self.proj = nn.Conv2d(channels, dim, kernel_size=1)
            self.head = nn.Linear(dim, embed_dim)
        self.norm = nn.LayerNorm(dim, elementwise_affine=False)  # features of unit scale for the resampler

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        images = check_images(images, self.pool)  # (b, t, 3, H, W)
        b, t = images.shape[:2]
        x = rearrange(images, "b t c h w -> (b t) c h w")  # (b*t, 3, H, W)
        x = self.blocks(self.stem(x))  # (b*t, C, H/2, W/2)
        x = F.avg_pool2d(F.gelu(x), self.pool // 2)  # (b*t, C, H/p, W/p): the grid
        x = self.proj(x)  # (b*t, d, H/p, W/p)
        x = rearrange(x, "(b t) d h w -> b t (h w) d", b=b, t=t)  # (b, t, g, d): the grid as a list of vectors
        return self.norm(x)  # (b, t, g, d)

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """One vector per picture: images (b, 3, H, W) -> (b, e), not normalised (the loss normalises)."""
        grid = self.forward(images)  # (b, t, g, d)
        if grid.shape[1] != 1:
            raise ValueError(f"embed takes one picture per row, images of shape (batch, 3, H, W); got {shape_str(images)}")
        return self.head(grid[:, 0].mean(dim=1))  # (b, e): mean over the grid cells, then projected


class CaptionEncoder(nn.Module):
    """Word embeddings -> mean over the words (padding left out) -> projection: tokens (b, n) long -> (b, e)."""

    def __init__(self, *, vocab_size: int = 12, dim: int = 64, embed_dim: int = 32, pad_id: int = 0, seed: int = 0):
        super().__init__()
        check_positive_int("vocab_size", vocab_size)
        self.pad_id = pad_id
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed + 1)  # not the vision encoder's stream
            self.embedding = nn.Embedding(vocab_size, dim, padding_idx=pad_id)
            self.proj = nn.Linear(dim, embed_dim)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        if not isinstance(tokens, torch.Tensor) or tokens.dtype != torch.long or tokens.ndim != 2:
            got = f"{tokens.dtype} tensor of shape {shape_str(tokens)}" if isinstance(tokens, torch.Tensor) else type(tokens).__name__
            raise TypeError(f"tokens must be a long tensor of shape (batch, words); got {got}")
        vocab = self.embedding.num_embeddings
        if tokens.numel() and (int(tokens.min()) < 0 or int(tokens.max()) >= vocab):
            raise ValueError(f"tokens must be ids in [0, {vocab}), got values in [{int(tokens.min())}, {int(tokens.max())}]")
        words = (tokens != self.pad_id).to(self.embedding.weight.dtype)  # (b, n): 1 for a word, 0 for padding
        if bool((words.sum(dim=1) == 0).any()):
            raise ValueError(f"every caption needs at least one word; tokens of shape {shape_str(tokens)} has a row of padding only")
        x = self.embedding(tokens)  # (b, n, dim)
        x = (x * words[..., None]).sum(dim=1) / words.sum(dim=1, keepdim=True)  # (b, dim): mean over the words
        return self.proj(x)  # (b, e)


def contrastive_loss(image_emb: torch.Tensor, text_emb: torch.Tensor, log_temperature: torch.Tensor) -> torch.Tensor:
    """The symmetric (two-term) contrastive loss: pair i of the batch is the right answer for row i and column i.

    image_emb (B, e), text_emb (B, e), log_temperature a 0-d tensor (learned) -> a scalar: the mean of the
    image->text and text->image cross-entropies (the paper adds the two terms; the mean only halves the step).
    """
    for name, emb in (("image_emb", image_emb), ("text_emb", text_emb)):
        check_tensor(name, emb, ndim=2, layout="(batch, embed_dim)")
    if image_emb.shape != text_emb.shape:
        raise ValueError(f"image_emb and text_emb must have the same shape (batch, embed_dim); got {shape_str(image_emb)} and {shape_str(text_emb)}")
    if not isinstance(log_temperature, torch.Tensor) or log_temperature.numel() != 1:
        raise TypeError(f"log_temperature must be a one-element tensor (a learned parameter), got {type(log_temperature).__name__}")
    image = F.normalize(image_emb, dim=-1)  # (B, e): unit length, so image @ text.T is the cosine similarity
    text = F.normalize(text_emb, dim=-1)  # (B, e)
    temperature = log_temperature.clamp(MIN_LOG_TEMPERATURE, MAX_LOG_TEMPERATURE).exp()  # (): in [0.01, 1]
    logits = image @ text.T / temperature  # (B, B): row i = picture i against every caption
    labels = torch.arange(logits.shape[0], device=logits.device)  # (B,): the right caption is on the diagonal
    image_to_text = F.cross_entropy(logits, labels)  # each picture picks its caption
    text_to_image = F.cross_entropy(logits.T, labels)  # each caption picks its picture
    return (image_to_text + text_to_image) / 2


def caption_tokens(captions, tokenizer: Tokenizer | None = None) -> torch.Tensor:
    """Captions (lists of words) -> ids (b, MAX_WORDS) long, padded on the right."""
    tok = tokenizer if tokenizer is not None else Tokenizer()
    rows = [tok.encode(words) + [tok.pad_id] * (MAX_WORDS - len(words)) for words in captions]
    return torch.tensor(rows, dtype=torch.long)  # (b, MAX_WORDS)


def draw_pairs(rng: np.random.Generator, *, image_size: int = 16, tokenizer: Tokenizer | None = None) -> dict:
    """One picture of each of the 12 classes, in a random order, each with its caption in a random format.

    Returns `images` (12, 3, H, W) float32, `tokens` (12, MAX_WORDS) long, `labels` (12,) long (the class index
    into CLASSES) and `captions` (the words).
    """
    order = rng.permutation(len(CLASSES))  # (12,): distinct classes, so the diagonal is the only right answer
    images, captions = [], []
    for k in order:
        colour, shape = CLASSES[k]
        images.append(render_shape(shape, colour, image_size=image_size, rng=rng))  # (3, H, W): new jitter each time
        captions.append(caption_words(colour, shape, FORMATS[int(rng.integers(len(FORMATS)))]))
    return {
        "images": torch.from_numpy(np.stack(images)),  # (12, 3, H, W)
        "tokens": caption_tokens(captions, tokenizer),  # (12, MAX_WORDS)
        "labels": torch.as_tensor(order, dtype=torch.long),  # (12,)
        "captions": captions,
    }


def streams(seed: int) -> tuple[np.random.Generator, np.random.Generator]:
    """Two independent random streams of one seed: (training pictures, held-out pictures)."""
    train_seed, heldout_seed = np.random.SeedSequence(seed).spawn(2)
    return np.random.default_rng(train_seed), np.random.default_rng(heldout_seed)


def training_step(vision, text, log_temperature, optimizer, batch: dict) -> float:
    """One step of contrastive pretraining on one batch of pairs; returns the loss."""
    dtype = log_temperature.dtype
    image_emb = vision.embed(batch["images"].to(dtype))  # (B, e)
    text_emb = text(batch["tokens"])  # (B, e)
    loss = contrastive_loss(image_emb, text_emb, log_temperature)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss.item()


def pretrain_vision(
    seed: int = 0, steps: int = 1500, *, lr: float = 3e-3, dim: int = 64, pool: int = 8, channels: int = 16, image_size: int = 16,
    progress: bool = False,
):
    """Pretrain a `ConvVisionEncoder` and a `CaptionEncoder` together with `contrastive_loss`, deterministically from
    `seed`. Training runs in float64 (see the module doc); the encoders come back in float32, in eval mode.

    Returns `(vision, text, history)`; history holds `loss` and `temperature` (every step), `seconds`, `config`.
    """
    steps = check_positive_int("steps", steps)
    start = time.perf_counter()
    tok = Tokenizer()
    vision = ConvVisionEncoder(dim=dim, pool=pool, channels=channels, seed=seed).double().train()
    text = CaptionEncoder(vocab_size=len(tok), pad_id=tok.pad_id, seed=seed).double().train()
    log_temperature = nn.Parameter(torch.tensor(INIT_LOG_TEMPERATURE, dtype=torch.float64))  # ()
    optimizer = torch.optim.Adam([*vision.parameters(), *text.parameters(), log_temperature], lr=lr)
    # cosine decay to 10% of the starting rate: fast progress, then the embeddings settle
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(s / steps, 1.0))))
    train_rng, _ = streams(seed)
    history = {"loss": [], "temperature": []}
    for step in range(steps):
        loss = training_step(vision, text, log_temperature, optimizer, draw_pairs(train_rng, image_size=image_size, tokenizer=tok))
        schedule.step()
        history["loss"].append(loss)
        history["temperature"].append(float(log_temperature.detach().clamp(MIN_LOG_TEMPERATURE, MAX_LOG_TEMPERATURE).exp()))
        if progress and (step + 1) % 100 == 0:
            print(f"step {step + 1}: loss {loss:.3f}, temperature {history['temperature'][-1]:.3f}", flush=True)
    vision, text = vision.float().eval(), text.float().eval()
    history.update(
        seconds=time.perf_counter() - start,
        log_temperature=float(log_temperature.detach()),
        config={"seed": seed, "steps": steps, "lr": lr, "dim": dim, "pool": pool, "channels": channels, "image_size": image_size},
    )
    return vision, text, history


@torch.no_grad()
def class_embeddings(text: CaptionEncoder, tokenizer: Tokenizer | None = None) -> torch.Tensor:
    """One unit vector per class (12, e): the mean of its captions' normalised embeddings over both formats (the
    paper's zero-shot classification averages the embeddings of several caption templates, Appendix B.1.3)."""
    captions = [caption_words(c, s, f) for c, s in CLASSES for f in FORMATS]  # 12 * 2 captions, class-major
    emb = F.normalize(text(caption_tokens(captions, tokenizer)), dim=-1)  # (24, e)
    emb = rearrange(emb, "(k f) e -> k f e", f=len(FORMATS)).mean(dim=1)  # (12, e)
    return F.normalize(emb, dim=-1)  # (12, e)


@torch.no_grad()
def heldout_pictures(seed: int = 0, num_batches: int = 50, image_size: int = 16) -> list[dict]:
    """`num_batches` batches of 12 pairs from the held-out stream of `seed` (never seen in training: new jitter)."""
    _, heldout_rng = streams(seed)
    return [draw_pairs(heldout_rng, image_size=image_size) for _ in range(num_batches)]


@torch.no_grad()
def zero_shot_accuracy(vision: ConvVisionEncoder, text: CaptionEncoder, *, seed: int = 0, num_batches: int = 50) -> float:
    """The fraction of held-out pictures whose nearest class caption (cosine similarity) is their own class."""
    classes = class_embeddings(text)  # (12, e)
    correct = total = 0
    for batch in heldout_pictures(seed, num_batches):
        image = F.normalize(vision.embed(batch["images"]), dim=-1)  # (12, e)
        predicted = (image @ classes.T).argmax(dim=1)  # (12,)
        correct += int((predicted == batch["labels"]).sum())
        total += len(predicted)
    return correct / total


@torch.no_grad()
def retrieval_recall(vision: ConvVisionEncoder, text: CaptionEncoder, *, seed: int = 0, num_batches: int = 50) -> dict:
    """Recall@1 both ways on held-out batches of 12 pairs: `image_to_text` (a picture's nearest caption of the batch
    is its own) and `text_to_image` (a caption's nearest picture is its own)."""
    hits_i2t = hits_t2i = total = 0
    for batch in heldout_pictures(seed, num_batches):
        image = F.normalize(vision.embed(batch["images"]), dim=-1)  # (12, e)
        caption = F.normalize(text(batch["tokens"]), dim=-1)  # (12, e)
        similarity = image @ caption.T  # (12, 12): pictures x captions
        right = torch.arange(len(similarity))  # (12,)
        hits_i2t += int((similarity.argmax(dim=1) == right).sum())
        hits_t2i += int((similarity.argmax(dim=0) == right).sum())
        total += len(right)
    return {"image_to_text": hits_i2t / total, "text_to_image": hits_t2i / total}


def save_encoders(path, vision: ConvVisionEncoder, text: CaptionEncoder, history: dict) -> Path:
    """Write both encoders' weights (float32) and the run's config atomically to `path`."""
    state = {
        "vision": {k: v.detach().float().clone() for k, v in vision.state_dict().items()},
        "text": {k: v.detach().float().clone() for k, v in text.state_dict().items()},
        "log_temperature": history["log_temperature"],
        "config": history["config"],
    }
    buffer = io.BytesIO()
    torch.save(state, buffer)  # into memory; the file itself is written atomically
    return write_bytes_atomic(path, buffer.getvalue())


def load_encoders(path=WEIGHTS) -> tuple[ConvVisionEncoder, CaptionEncoder, dict]:
    """The encoders stored at `path` (default: the committed weights), float32, eval mode: (vision, text, state)."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    config = state["config"]
    vision = ConvVisionEncoder(dim=config["dim"], pool=config["pool"], channels=config["channels"], seed=config["seed"])
    vision.load_state_dict(state["vision"])
    text = CaptionEncoder(vocab_size=state["text"]["embedding.weight"].shape[0], seed=config["seed"])
    text.load_state_dict(state["text"])
    return vision.eval(), text.eval(), state


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m flamingo_lite.tiny.contrastive",
        description="Pretrain the tiny Flamingo's vision encoder contrastively and write its weights.",
        epilog="The committed weights: python -m flamingo_lite.tiny.contrastive --out flamingo_lite/tiny/vision_encoder.pt --seed 0",
    )
    parser.add_argument("--out", required=True, help="where to write the weights (checked before training; replaced atomically)")
    parser.add_argument("--seed", type=int, default=0, help="seed for the weights and the pictures (default 0)")
    parser.add_argument("--steps", type=int, default=1500, help="training steps, 12 pairs each (default 1500)")
    args = parser.parse_args(argv)
    try:
        out = check_output_path(args.out, "--out")
    except ValueError as err:
        parser.error(str(err))  # exit code 2, before any training
    torch.set_num_threads(1)  # the model is tiny: one thread is fastest, and the numbers do not depend on the count
    vision, text, history = pretrain_vision(seed=args.seed, steps=args.steps)
    out.parent.mkdir(parents=True, exist_ok=True)
    save_encoders(out, vision, text, history)
    print(
        f"zero-shot accuracy {zero_shot_accuracy(vision, text, seed=args.seed):.3f}, final loss {history['loss'][-1]:.3f}, "
        f"temperature {history['temperature'][-1]:.3f}, {history['seconds']:.1f} s; wrote {out}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
