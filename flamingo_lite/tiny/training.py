"""Training the tiny Flamingo, in the paper's order: the language model on text alone, then Flamingo with the
language model (and the vision encoder) frozen, logging how far each tanh gate has opened.

Paper, Sec. 2.4 and Fig. 6 (Alayrac et al. 2022, arXiv 2204.14198): the loss is the usual next-token
cross-entropy on the text, given the pictures that come before it. The gates start at 0, so at step 0 the
model is the frozen language model; the paper's Fig. 6 shows |tanh(gate)| growing from 0 during training.
`train_flamingo` records the loss and tanh of every `attn_gate` and `ff_gate` at step 0 (before any update) and
every `log_every` steps, and a tqdm progress bar shows it (`progress=False` turns the bar off, e.g. in lessons).

Everything runs on the CPU by default; pass `device="cuda"` (or set FLAMINGO_DEVICE) for a GPU.
"""
from __future__ import annotations

import math
import random
import time
from dataclasses import asdict, dataclass, replace

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from ..device import get_device
from ..validation import check_non_negative_number, check_positive_int, check_positive_number, check_seed
from . import distributed
from .data import EOC_TOKEN, MEDIA_TOKEN, InterleavedData, Tokenizer, make_splits, parse_caption
from .language_model import TinyLM
from .model import Flamingo, FlamingoConfig


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and PyTorch, so a run is repeatable."""
    random.seed(seed)
    np.random.seed(seed % 2**32)  # numpy's seeds stop at 2**32 - 1, and a run of seed S also seeds S + 1
    torch.manual_seed(seed)


def next_token_loss(logits: torch.Tensor, tokens: torch.Tensor, pad_id: int = 0) -> torch.Tensor:
    """Mean cross-entropy of predicting token i+1 from positions <= i, padding targets left out.

    logits (b, n, V), tokens (b, n) -> a scalar.
    """
    predictions = logits[:, :-1]  # (b, n-1, V): the prediction made at each position ...
    targets = tokens[:, 1:]  # (b, n-1): ... is scored against the next token
    return F.cross_entropy(predictions.reshape(-1, predictions.shape[-1]), targets.reshape(-1), ignore_index=pad_id)


def next_token_loss_sum(logits: torch.Tensor, tokens: torch.Tensor, pad_id: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """The summed cross-entropy of `next_token_loss` and the number of targets it sums over (two scalars): a
    process's share of a batch split across processes (`distributed.mean_loss` turns them into the batch's mean)."""
    targets = tokens[:, 1:]  # (b, n-1)
    total = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=pad_id, reduction="sum")
    return total, (targets != pad_id).sum()


def batch_loss(world: distributed.World, logits: torch.Tensor, tokens: torch.Tensor, pad_id: int) -> tuple[torch.Tensor, float]:
    """(loss to call backward on, the whole batch's mean loss): `next_token_loss` in one process; across
    processes, each one's share of the batch's mean (`distributed.mean_loss`)."""
    if not world.distributed:
        loss = next_token_loss(logits, tokens, pad_id)
        return loss, loss.item()
    return distributed.mean_loss(world, *next_token_loss_sum(logits, tokens, pad_id))


def batches(num_items: int, batch_size: int, steps: int, generator: torch.Generator, lengths: torch.Tensor | None = None):
    """`steps` index tensors of `batch_size`, walking through shuffled epochs.

    With `lengths` (num_items,), each epoch's batches are made of sequences of similar length (bucketing): the
    shuffled epoch is cut into pools of 16 batches, each pool sorted by length and cut into batches, and the batches
    are visited in random order. A batch then wastes little on padding once it is trimmed to its longest sequence.
    """
    def epoch() -> list[torch.Tensor]:
        order = torch.randperm(num_items, generator=generator)  # (num_items,)
        usable = order[: num_items - num_items % batch_size]  # whole batches only
        if lengths is None:
            return list(usable.split(batch_size))
        pool = 16 * batch_size
        grouped = []
        for start in range(0, len(usable), pool):
            part = usable[start : start + pool]  # (<= pool,)
            part = part[torch.argsort(lengths[part], stable=True)]  # shortest first
            grouped += list(part.split(batch_size))
        return [grouped[i] for i in torch.randperm(len(grouped), generator=generator).tolist()]

    queue: list[torch.Tensor] = []
    for _ in range(steps):
        if not queue:
            queue = epoch()
        yield queue.pop(0)  # (batch_size,)


def train_language_model(
    lm: TinyLM,
    data: InterleavedData,
    *,
    steps: int = 300,
    batch_size: int = 64,
    lr: float = 3e-3,
    seed: int = 0,
    device=None,
    progress: bool = True,
    pad_id: int = 0,
    bucket_by_length: bool = False,
    world: distributed.World | None = None,
) -> list[float]:
    """Train `lm` on the token sequences of `data` alone (no pictures). Returns the loss of every step.

    `bucket_by_length`: batches of similar length, trimmed to their longest sequence (`batches`); the loss is the
    same, padding columns cost nothing. The sequences must be padded on the right. `world`: the processes that
    share each batch (`flamingo_lite.tiny.distributed`; None: this one alone)."""
    steps = check_positive_int("steps", steps)
    device = get_device(device) if world is None else world.device
    world = world if world is not None else distributed.World(device=device)
    distributed.check_batch_split(batch_size, world.world_size)
    lm.to(device).train()
    runner = distributed.wrap(replace(world, fsdp=False), lm)  # DDP: FSDP is for the LM once it is frozen
    optimizer = torch.optim.AdamW(lm.parameters(), lr=lr, weight_decay=0.0)
    generator = torch.Generator().manual_seed(seed)
    tokens_all = data.tokens.to(device)  # (N, n)
    lengths = (data.tokens != pad_id).sum(dim=1)  # (N,)
    losses = []
    order = batches(len(data), batch_size, steps, generator, lengths if bucket_by_length else None)
    bar = tqdm(order, total=steps, desc="language model", disable=not (progress and world.is_main))
    for idx in bar:
        tokens = tokens_all[distributed.shard(world, idx).to(device)]  # (B / processes, n)
        if bucket_by_length:
            tokens = tokens[:, : int(lengths[idx].max())]  # (B, n'): trailing padding cut, the same loss
        loss, batch_mean = batch_loss(world, runner(tokens), tokens, pad_id)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(batch_mean)
        bar.set_postfix(loss=f"{losses[-1]:.3f}")
    lm.eval()
    return losses


@torch.no_grad()
def text_loss(model, data: InterleavedData, *, batch_size: int = 256, pad_id: int = 0, device=None) -> float:
    """The mean next-token loss of a `TinyLM` or a `Flamingo` on `data` (pictures given to Flamingo)."""
    device = get_device(device)
    total, count = 0.0, 0
    for start in range(0, len(data), batch_size):
        part = data[start : start + batch_size].to(device)
        logits = model(part.tokens, part.images) if isinstance(model, Flamingo) else model(part.tokens)  # (B, n, V)
        targets = part.tokens[:, 1:]  # (B, n-1)
        loss = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=pad_id, reduction="sum")
        total += float(loss)
        count += int((targets != pad_id).sum())
    return total / count


def parameter_groups(model: nn.Module, *, lr: float, gate_lr: float | None = None, weight_decay: float = 0.0) -> list[dict]:
    """AdamW parameter groups for the trainable parameters of `model`: the weights with `weight_decay`, the tanh
    gates (names ending in `_gate`) with `gate_lr` (default `lr`) and no weight decay. Frozen parameters are left out."""
    gates = [p for n, p in model.named_parameters() if p.requires_grad and n.endswith("_gate")]
    others = [p for n, p in model.named_parameters() if p.requires_grad and not n.endswith("_gate")]
    groups = [{"params": others, "weight_decay": weight_decay}]
    if gates:  # the gates get their own learning rate and no weight decay: decay would pull them shut
        groups.append({"params": gates, "lr": gate_lr if gate_lr is not None else lr, "weight_decay": 0.0})
    return groups


def train_flamingo(
    model: Flamingo,
    data: InterleavedData,
    *,
    steps: int = 400,
    batch_size: int = 32,
    lr: float = 2e-3,
    gate_lr: float | None = None,
    weight_decay: float = 0.0,
    log_every: int = 10,
    seed: int = 0,
    device=None,
    progress: bool = True,
    pad_id: int = 0,
    bucket_by_length: bool = False,
    cache_vision: bool = False,
    world: distributed.World | None = None,
) -> dict:
    """Train the trainable parts of `model` (resampler, gated blocks) on `data`.

    `bucket_by_length`: as in `train_language_model`. `cache_vision`: run the frozen vision encoder once over every
    picture of `data` before training, instead of again at every step (the same features; the encoder's forward
    would otherwise cost more than the rest of a step). Refused if the encoder trains. `world`: the processes that
    share each batch (`flamingo_lite.tiny.distributed`; None: this one alone); the history is the same.

    Returns a history: `step` (the logged steps, 0 first), `loss` (the batch loss at each logged step; at step 0
    the loss of the first batch before any update), `attn_gate_tanh` and `ff_gate_tanh` (per logged step, a
    list over the gated blocks), `loss_every_step`.
    """
    steps = check_positive_int("steps", steps)
    log_every = check_positive_int("log_every", log_every)
    device = get_device(device) if world is None else world.device
    world = world if world is not None else distributed.World(device=device)
    distributed.check_batch_split(batch_size, world.world_size)
    if cache_vision and world.distributed:
        raise ValueError("cache_vision=True runs in one process only (it calls the resampler outside the model)")
    model.to(device).train()
    runner = distributed.wrap(world, model, layers=list(model.lm.blocks))  # with FSDP: one group per LM layer
    optimizer = torch.optim.AdamW(parameter_groups(model, lr=lr, gate_lr=gate_lr, weight_decay=weight_decay), lr=lr)
    # cosine decay to 10% of the starting rate: fast early progress, then the weights (and gates) settle
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(s / steps, 1.0))))
    generator = torch.Generator().manual_seed(seed)
    history = {"step": [], "loss": [], "attn_gate_tanh": [], "ff_gate_tanh": [], "loss_every_step": []}

    def log(step: int, loss: float) -> None:
        with distributed.gathered(world, model):
            g = model.gates()
        history["step"].append(step)
        history["loss"].append(loss)
        history["attn_gate_tanh"].append(g["attn"])
        history["ff_gate_tanh"].append(g["ff"])

    features = None
    if cache_vision:
        if any(p.requires_grad for p in model.vision.parameters()):
            raise ValueError("cache_vision=True needs a frozen vision encoder, but model.vision has trainable parameters")
        with torch.no_grad():
            features = torch.cat([model.vision(data.images[i : i + 256].to(device)) for i in range(0, len(data), 256)])  # (N, T, g, d)
    lengths = (data.tokens != pad_id).sum(dim=1)  # (N,)
    order = batches(len(data), batch_size, steps, generator, lengths if bucket_by_length else None)
    bar = tqdm(order, total=steps, desc="flamingo", disable=not (progress and world.is_main))
    for step, idx in enumerate(bar):
        part = data[distributed.shard(world, idx)].to(device)  # this process's share of the batch
        n = int(lengths[idx].max()) if bucket_by_length else part.tokens.shape[1]  # trailing padding cut: the same loss
        tokens, media_locations = part.tokens[:, :n], part.media_locations[:, :n]  # (B, n'), (B, n')
        if features is None:
            logits = runner(tokens, part.images, media_locations)  # (B, n', V)
        else:
            media = model.resampler(features[idx.to(device)])  # (B, T, L, d): only the resampler runs
            logits = model(tokens, media=media, media_locations=media_locations)  # (B, n', V)
        loss, batch_mean = batch_loss(world, logits, tokens, pad_id)
        if step == 0:
            log(0, batch_mean)  # before any update: gates exactly 0, the loss of the frozen LM
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        history["loss_every_step"].append(batch_mean)
        if (step + 1) % log_every == 0 or step + 1 == steps:
            log(step + 1, batch_mean)
            bar.set_postfix(loss=f"{batch_mean:.3f}", attn_gate=" ".join(f"{a:.2f}" for a in history["attn_gate_tanh"][-1]))
    model.eval()
    return history


@torch.no_grad()
def generate(
    model: Flamingo, tokens: torch.Tensor, images: torch.Tensor, lengths, *, max_new_tokens: int = 5, stop_id: int | None = None,
    media_id: int | None = None,
) -> list[list[int]]:
    """Greedy decoding from prompts of different lengths in one batch.

    tokens (b, n): each row's prompt is its first `lengths[i]` tokens (anything after is overwritten);
    images (b, t, 3, H, W). Decodes until `stop_id` (kept) or `max_new_tokens`; returns the new ids of each row.
    A generated `<image>` (there is no picture for it) ends that row.
    """
    b, device = tokens.shape[0], tokens.device
    lengths = torch.as_tensor(lengths, dtype=torch.long, device=device).clone()  # (b,)
    need = int(lengths.max()) + max_new_tokens
    if need > tokens.shape[1]:
        pad = tokens.new_zeros(b, need - tokens.shape[1])  # (b, extra)
        tokens = torch.cat([tokens, pad], dim=1)  # (b, need)
    tokens = tokens.clone()
    tokens = tokens[:, : min(tokens.shape[1], model.config.max_len)]
    media = model.encode_images(images)  # (b, t, L, d), once for all steps
    rows = torch.arange(b, device=device)  # (b,)
    out = [[] for _ in range(b)]
    done = torch.zeros(b, dtype=torch.bool, device=device)  # (b,)
    for _ in range(max_new_tokens):
        if bool(done.all()) or int(lengths.max()) >= tokens.shape[1]:
            break
        # later positions hold padding or stale ids; the causal LM never lets them affect earlier positions
        keep = torch.arange(tokens.shape[1], device=device) < lengths[:, None]  # (b, n)
        current = torch.where(keep, tokens, torch.zeros_like(tokens))  # (b, n)
        locations = current == model.config.media_token_id  # (b, n)
        logits = model(current, media=media, media_locations=locations)  # (b, n, V)
        next_ids = logits[rows, lengths - 1].argmax(dim=-1).tolist()  # b ids, read once
        for i in range(b):
            if bool(done[i]):
                continue
            nid = int(next_ids[i])
            if media_id is not None and nid == media_id:
                done[i] = True
                out[i].append(nid)
                continue
            out[i].append(nid)
            tokens[i, int(lengths[i])] = nid
            if stop_id is not None and nid == stop_id:
                done[i] = True
        lengths = torch.where(done, lengths, lengths + 1)
    return out


def caption_prompts(data: InterleavedData, tokenizer: Tokenizer):
    """One prompt per picture: the sequence up to and including that picture's `<image>`, the true captions of
    the earlier pictures given as context. Returns (sequence index, picture index, prompt length) triples."""
    triples = []
    for s in range(len(data)):
        positions = torch.nonzero(data.tokens[s] == tokenizer.media_id).flatten().tolist()
        for j, pos in enumerate(positions):
            triples.append((s, j, pos + 1))
    return triples


@torch.no_grad()
def evaluate_captions(model: Flamingo, data: InterleavedData, tokenizer: Tokenizer | None = None, *, device=None, batch_size: int = 512) -> dict:
    """Greedy captions of every picture of `data`, each given the true captions of the pictures before it.

    Returns `caption_accuracy` (the caption is well formed and names the right colour and shape),
    `format_accuracy` (pictures after the first of their sequence: the caption keeps the sequence's format),
    `exact_accuracy` (those later pictures: the caption is exactly the true one), and `captions` (the words).
    """
    tok = tokenizer if tokenizer is not None else Tokenizer()
    device = get_device(device)
    model.to(device).eval()
    triples = caption_prompts(data, tok)
    captions = []
    for start in range(0, len(triples), batch_size):
        chunk = triples[start : start + batch_size]
        seqs = torch.tensor([s for s, _, _ in chunk])
        lengths = [n for _, _, n in chunk]
        new = generate(
            model, data.tokens[seqs].to(device), data.images[seqs].to(device), lengths,
            max_new_tokens=5, stop_id=tok.eoc_id, media_id=tok.media_id,
        )
        captions += [tok.words(ids) for ids in new]
    correct, fmt_ok, exact, later = 0, 0, 0, 0
    for (s, j, _), words in zip(triples, captions):
        colour, shape = data.labels[s][j]
        ended = bool(words) and words[-1] == EOC_TOKEN
        parsed = parse_caption(words[:-1]) if ended else None
        correct += parsed is not None and parsed[:2] == (colour, shape)
        if j > 0:
            later += 1
            fmt_ok += parsed is not None and parsed[2] == data.formats[s]
            exact += parsed == (colour, shape, data.formats[s])
    return {
        "caption_accuracy": correct / max(len(triples), 1),
        "format_accuracy": fmt_ok / max(later, 1),
        "exact_accuracy": exact / max(later, 1),
        "num_captions": len(triples),
        "captions": captions,
    }


@torch.no_grad()
def caption_images(
    model: Flamingo, images: torch.Tensor, tokenizer: Tokenizer | None = None, *, context: str = "", context_images=None, device=None,
) -> list[str]:
    """Greedy captions of new pictures: images (k, 3, H, W) -> k strings.

    `context` is an optional interleaved prefix such as `'<image> a circle in red <eoc>'` with its pictures
    `context_images` (c, 3, H, W), one per `<image>`: the model then captions each picture after that context
    (few-shot, in context).
    """
    tok = tokenizer if tokenizer is not None else Tokenizer()
    device = get_device(device)
    model.to(device).eval()
    prefix = tok.encode(context) if context else []
    num_context = prefix.count(tok.media_id)
    if num_context and (context_images is None or len(context_images) != num_context):
        raise ValueError(f"context has {num_context} <image> markers; give context_images with that many pictures")
    if images.ndim != 4:
        raise ValueError(f"images must have shape (k, 3, H, W), got {tuple(images.shape)}")
    k = images.shape[0]
    prompt = prefix + [tok.media_id]
    tokens = torch.tensor([prompt] * k, dtype=torch.long, device=device)  # (k, p)
    pictures = images.to(device)[:, None]  # (k, 1, 3, H, W)
    if num_context:
        ctx = context_images.to(device)[None].expand(k, -1, -1, -1, -1)  # (k, c, 3, H, W)
        pictures = torch.cat([ctx, pictures], dim=1)  # (k, c+1, 3, H, W)
    new = generate(model, tokens, pictures, [len(prompt)] * k, max_new_tokens=5, stop_id=tok.eoc_id, media_id=tok.media_id)
    return [" ".join(w for w in tok.words(ids) if w != EOC_TOKEN) for ids in new]


@dataclass
class TrainingSetup:
    """The knobs of a whole run (`run_training`), recorded in the history's `config`."""

    steps: int = 800
    lm_steps: int = 150
    batch_size: int = 48
    lr: float = 7e-3
    gate_lr: float = 3e-2
    weight_decay: float = 0.3  # on the resampler and blocks, not the gates: the gates carry the scale
    lm_lr: float = 5e-3
    log_every: int = 10
    num_train: int = 3000
    num_heldout: int = 200
    seed: int = 0

    def __post_init__(self):  # every number in range, named, before any work
        for name in ("steps", "lm_steps", "batch_size", "log_every", "num_train", "num_heldout"):
            check_positive_int(f"TrainingSetup.{name}", getattr(self, name))
        for name in ("lr", "gate_lr", "lm_lr"):
            check_positive_number(f"TrainingSetup.{name}", getattr(self, name))
        check_non_negative_number("TrainingSetup.weight_decay", self.weight_decay)
        check_seed("TrainingSetup.seed", self.seed)


def run_training(
    setup: TrainingSetup | None = None, config: FlamingoConfig | None = None, *, device=None, progress: bool = True, lm: TinyLM | None = None,
    world: distributed.World | None = None,
):
    """The whole recipe: data, the language model on text alone (or the given `lm`), then Flamingo, then the
    held-out captions. Returns `(model, history)`; `history` holds the logged losses and gates,
    `heldout_caption_accuracy`, `heldout_format_accuracy`, `lm_loss`, `seconds` and `config`.

    `world` (`flamingo_lite.tiny.distributed.start()`): the processes that share each batch; every one trains, the
    main one evaluates and returns the model and the whole history, the others return (None, the training history).
    """
    setup = setup if setup is not None else TrainingSetup()
    config = config if config is not None else FlamingoConfig()
    device = get_device(device) if world is None else world.device
    world = world if world is not None else distributed.World(device=device)
    start = time.perf_counter()
    seed_everything(setup.seed)
    tok = Tokenizer()
    train, heldout = make_splits(setup.num_train, setup.num_heldout, seed=setup.seed, max_images=config.num_media_embeds)
    lm_losses = []
    if lm is None:
        lm = TinyLM(config.lm_config())
        lm_losses = train_language_model(
            lm, train, steps=setup.lm_steps, lr=setup.lm_lr, seed=setup.seed, device=device, progress=progress, pad_id=tok.pad_id,
            world=world,
        )
    seed_everything(setup.seed + 1)
    model = Flamingo(config, lm=lm).to(device)
    if world.distributed:
        distributed.seed_rank(world, setup.seed + 1)
    history = train_flamingo(
        model, train, steps=setup.steps, batch_size=setup.batch_size, lr=setup.lr, gate_lr=setup.gate_lr,
        weight_decay=setup.weight_decay, log_every=setup.log_every, seed=setup.seed, device=device, progress=progress, pad_id=tok.pad_id,
        world=world,
    )
    if world.fsdp and world.distributed:  # the weights are in shards: put them together in a plain model to evaluate
        state = distributed.full_state_dict(world, model)
        model = None
        if world.is_main:
            model = Flamingo(config, lm=TinyLM(config.lm_config())).to(device)
            model.load_state_dict(state)
    if not world.is_main:
        return None, history
    scores = evaluate_captions(model, heldout, tok, device=device)
    history.update(
        lm_loss=lm_losses,
        heldout_caption_accuracy=scores["caption_accuracy"],
        heldout_format_accuracy=scores["format_accuracy"],
        heldout_exact_accuracy=scores["exact_accuracy"],
        heldout_lm_text_loss=text_loss(model.lm, heldout, device=device),
        heldout_flamingo_text_loss=text_loss(model, heldout, device=device),
        seconds=time.perf_counter() - start,
        device=str(device),
        processes=world.world_size,
        config={"model": config.to_dict(), "training": asdict(setup), "xattn_layers": list(model.xattn_layers)},
    )
    return model, history
