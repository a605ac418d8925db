"""Checks for lesson 09: the learner writes the pieces of the training step (the next-token loss, freezing, the
AdamW parameter groups) and greedy decoding, then two exercises that read the training's results.

The loss is checked on logits and tokens with padding, against the loss not shifted (scoring each position's
own token), shifted the wrong way, and counted on padding. Freezing and the parameter groups are read off the
learner's model and groups. Greedy decoding runs on a scripted model whose next token is known at every
position, so a decoder that does not stop at `<eoc>`, reads the wrong position or never feeds its own word back
gives a recognisable answer.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ...tiny import data as shapes_data
from ...tiny import training
from ...tiny.model import Flamingo, FlamingoConfig
from . import Mistake, compare, fail, passed, register_hints, run_learner

register_hints({
    "09.loss": "The prediction at position i is for token i+1: take `logits[:, :-1]` and `tokens[:, 1:]`, flatten "
               "both (`.reshape(-1, V)` and `.reshape(-1)`), and call `F.cross_entropy(..., ignore_index=pad_id)` so "
               "padding targets are left out of the mean.",
    "09.freeze": "`model.vision.requires_grad_(False)` and `model.lm.requires_grad_(False)`; the resampler and the "
                 "gated blocks keep `requires_grad=True`. Return the model.",
    "09.groups": "Walk `model.named_parameters()`, skip `not p.requires_grad`, put names ending in `_gate` in "
                 "`{'params': gates, 'lr': gate_lr, 'weight_decay': 0.0}` and the rest in "
                 "`{'params': others, 'weight_decay': weight_decay}`.",
    "09.greedy": "Loop `max_new_tokens` times: `logits = model(ids[None], images[None])`, the next id is "
                 "`logits[0, -1].argmax()`; append it to `ids` (`torch.cat`) and to your answer, and `break` after "
                 "appending `eoc_id`.",
    "09.first_step": "Walk `zip(history['step'], history['attn_gate_tanh'])` and return the first step where "
                     "`abs(gates[layer]) > threshold`; after the loop return None.",
    "09.format": "`caption.split()`: 3 words `a COLOUR SHAPE` is colour first, 4 words `a SHAPE in COLOUR` is shape "
                 "first; check each word against `shapes_data.COLOURS` / `shapes_data.SHAPES`.",
})


def example_batch(seed: int = 0):
    """Logits (3, 8, 12) and tokens (3, 8) whose rows end in different amounts of padding (id 0)."""
    generator = torch.Generator().manual_seed(seed)
    tokens = torch.randint(3, 12, (3, 8), generator=generator)  # (b, n)
    tokens[:, 0] = 1  # every row starts with <image>
    tokens[1, 5:] = 0  # padding
    tokens[2, 3:] = 0
    logits = torch.randn(3, 8, 12, generator=generator) * 2  # (b, n, V)
    return logits, tokens


def check_loss(next_token_loss) -> None:
    """Step "09.loss": the shifted, padding-free mean cross-entropy, on a padded batch."""
    logits, tokens = example_batch()
    got = run_learner(next_token_loss, logits.clone(), tokens.clone(), 0, what="your next_token_loss(logits, tokens, pad_id)")
    if isinstance(got, torch.Tensor) and got.numel() == 1:
        got = got.reshape(())
    want = training.next_token_loss(logits, tokens, 0)  # ()
    flat = lambda lg, tk, **kw: F.cross_entropy(lg.reshape(-1, lg.shape[-1]), tk.reshape(-1), **kw)  # noqa: E731
    mistakes = [
        Mistake("not shifted, padding left out", flat(logits, tokens, ignore_index=0),
                "each position is scored against its own token: the prediction at position i is for token i+1, so "
                "compare `logits[:, :-1]` with `tokens[:, 1:]`."),
        Mistake("not shifted", flat(logits, tokens),
                "each position is scored against its own token (and padding is counted): compare `logits[:, :-1]` "
                "with `tokens[:, 1:]`, with `ignore_index=pad_id`."),
        Mistake("padding counted", flat(logits[:, :-1], tokens[:, 1:]),
                "the loss counts the padding targets: pass `ignore_index=pad_id` to `F.cross_entropy` so only real "
                "tokens are scored."),
        Mistake("shifted the wrong way", flat(logits[:, 1:], tokens[:, :-1], ignore_index=0),
                "the shift goes the wrong way: position i predicts token i+1, so drop the *last* logits "
                "(`logits[:, :-1]`) and the *first* tokens (`tokens[:, 1:]`)."),
        Mistake("sum", flat(logits[:, :-1], tokens[:, 1:], ignore_index=0, reduction="sum"),
                "the loss is a sum: take the mean over the real target tokens (the default `reduction='mean'`)."),
    ]
    compare(got, want, what="your next_token_loss", mistakes=mistakes)
    passed(f"next_token_loss is right: {want.item():.4f} on a batch with padding, only the {int((tokens[:, 1:] != 0).sum())} "
           "real next tokens counted.")


def check_freeze(freeze_pretrained, config: FlamingoConfig | None = None) -> None:
    """Step "09.freeze": after the learner's function only the resampler and the gated blocks train."""
    model = Flamingo(config if config is not None else FlamingoConfig()).requires_grad_(True)  # all trainable first
    out = run_learner(freeze_pretrained, model, what="your freeze_pretrained(model)")
    if out is not model:
        fail("freeze_pretrained must return the model it was given (`return model`), after freezing its parts in place.")
    parts = {part: [p.requires_grad for n, p in model.named_parameters() if n.split(".")[0] == part]
             for part in ("vision", "lm", "resampler", "xattn")}
    left = [part for part in ("vision", "lm") if any(parts[part])]
    if left:
        fail(f"the frozen parts were left trainable ({', '.join(left)} still has requires_grad=True): call "
             "`.requires_grad_(False)` on `model.vision` and `model.lm`.")
    shut = [part for part in ("resampler", "xattn") if not all(parts[part])]
    if shut:
        fail(f"{' and '.join(shut)} was frozen too: only the pretrained parts (vision, lm) are frozen; the new parts "
             "must learn.")
    passed("freeze_pretrained is right: the vision encoder and the language model are frozen, the resampler and the "
           "gated blocks learn.")


def check_groups(parameter_groups, model: Flamingo | None = None, *, lr=7e-3, gate_lr=3e-2, weight_decay=0.3) -> list:
    """Step "09.groups": every trainable parameter in exactly one group; the gates with their learning rate and no
    weight decay, the other weights with weight decay; nothing frozen. Returns the learner's groups."""
    model = model if model is not None else Flamingo(FlamingoConfig())
    groups = run_learner(parameter_groups, model, lr=lr, gate_lr=gate_lr, weight_decay=weight_decay,
                         what="your parameter_groups(model, lr=..., gate_lr=..., weight_decay=...)")
    if isinstance(groups, dict) or not isinstance(groups, (list, tuple)) or not all(isinstance(g, dict) for g in groups):
        fail("parameter_groups must return a list of dicts, each with a 'params' list (AdamW's parameter groups).")
    names = {id(p): n for n, p in model.named_parameters()}
    seen = {}
    for g in groups:
        for p in list(g.get("params", [])):
            if id(p) in seen:
                fail(f"{names.get(id(p), 'a parameter')} is in two groups: put each parameter in exactly one.")
            seen[id(p)] = g
    frozen = [n for n, p in model.named_parameters() if not p.requires_grad and id(p) in seen]
    if frozen:
        fail(f"frozen parameters are in the groups ({frozen[0]}, ...): leave out every parameter with "
             "requires_grad=False.")
    missing = [n for n, p in model.named_parameters() if p.requires_grad and id(p) not in seen]
    if missing:
        fail(f"{len(missing)} trainable parameters are in no group ({missing[0]}, ...): every trainable one must be in one.")
    for n, p in model.named_parameters():
        if not p.requires_grad:
            continue
        g = seen[id(p)]
        decay, rate = g.get("weight_decay", None), g.get("lr", lr)
        if n.endswith("_gate"):
            if decay is None or decay != 0.0:
                fail(f"the gates get weight decay ({n} in a group with weight_decay={decay if decay is not None else 'AdamW default 0.01'}): "
                     "decay would pull them shut, so give their group 'weight_decay': 0.0.")
            if rate != gate_lr:
                fail(f"the gates train at lr={rate}, not at gate_lr={gate_lr}: give their group 'lr': gate_lr.")
        else:
            if decay != weight_decay:
                fail(f"{n} has weight_decay={decay}, not {weight_decay}: the weights (not the gates) get weight decay.")
            if rate != lr:
                fail(f"{n} trains at lr={rate}: the weights use the base learning rate lr={lr}.")
    try:
        torch.optim.AdamW(groups, lr=lr)
    except Exception as error:  # a group AdamW itself refuses
        fail(f"AdamW does not accept your groups: {str(error).splitlines()[0]}")
    passed(f"parameter_groups is right: {sum(1 for n, p in model.named_parameters() if p.requires_grad and n.endswith('_gate'))} "
           "gates at gate_lr without weight decay, the other trainable weights with weight decay, nothing frozen.")
    return list(groups)


class ScriptedModel(nn.Module):
    """A stand-in for Flamingo whose greedy next token is known: after a prompt of `prompt_len` tokens, position
    `prompt_len - 1 + j` predicts `script[j]`; earlier positions predict `early`, later ones `late`."""

    def __init__(self, script, prompt_len, vocab=12, early=11, late=6):
        super().__init__()
        self.script, self.prompt_len, self.vocab, self.early, self.late = list(script), prompt_len, vocab, early, late

    def forward(self, tokens, images=None, media_locations=None, **kwargs):
        if images is None and kwargs.get("media") is None:
            raise ValueError("give the pictures: model(tokens, images)")
        b, n = tokens.shape
        ids = []
        for i in range(n):
            j = i - (self.prompt_len - 1)
            ids.append(self.early if j < 0 else self.script[j] if j < len(self.script) else self.late)
        return F.one_hot(torch.tensor(ids), self.vocab).float().expand(b, n, self.vocab) * 5.0  # (b, n, V)


def check_greedy(greedy_decode) -> None:
    """Step "09.greedy": the learner's decoder on scripted models, stopping at `<eoc>` and at `max_new_tokens`."""
    tok = shapes_data.Tokenizer()
    prompt = torch.tensor(tok.encode("<image> a"))  # (p,)
    images = torch.zeros(1, 3, 16, 16)  # (t, 3, H, W): the scripted model does not look at them
    red, circle, blue, square = (tok.index[w] for w in ("red", "circle", "blue", "square"))
    cases = [([red, circle, tok.eoc_id, blue, square], 5, [red, circle, tok.eoc_id]),
             ([blue, square, red, circle, tok.eoc_id], 3, [blue, square, red])]
    for script, max_new, want in cases:
        model = ScriptedModel(script, len(prompt))
        got = run_learner(greedy_decode, model, prompt.clone(), images, eoc_id=tok.eoc_id, max_new_tokens=max_new,
                          what="your greedy_decode(model, prompt, images, eoc_id=..., max_new_tokens=...)")
        if isinstance(got, torch.Tensor):
            got = got.flatten().tolist()
        if not isinstance(got, (list, tuple)):
            fail(f"greedy_decode returned a {type(got).__name__}: return the list of new token ids.")
        got = [int(i) for i in got]
        if got == want:
            continue
        words = lambda ids: " ".join(tok.vocab[i] if 0 <= i < len(tok.vocab) else str(i) for i in ids)  # noqa: E731
        if got[: len(prompt)] == prompt.tolist() and got[len(prompt):] == want:
            fail("greedy_decode returned the prompt too: return only the new ids.")
        if tok.eoc_id in want and got[: len(want)] == want and len(got) > len(want):
            fail(f"greedy decoding does not stop at <eoc> ({words(got)!r}): `break` right after appending eoc_id.")
        if tok.eoc_id in want and got == want[:-1]:
            fail("greedy_decode stops at <eoc> but leaves it out: append eoc_id, then stop.")
        if len(got) > max_new:
            fail(f"greedy_decode made {len(got)} tokens with max_new_tokens={max_new}: stop after that many.")
        if got and all(i == got[0] for i in got) and got[0] == script[0]:
            fail("greedy_decode repeats its first word: append each new id to the input before the next step.")
        if got and got[0] == model.early:
            fail("greedy_decode reads the wrong position: the next token is predicted at the last position, "
                 "`logits[0, -1]`.")
        fail(f"greedy_decode gave {words(got)!r}, the scripted model's greedy answer is {words(want)!r}.")
    passed("greedy_decode is right: it reads the last position, feeds each word back, and stops at <eoc> or "
           "max_new_tokens.")


def check_first_step_above(first_step_above) -> None:
    """Exercise "09.first_step" on a small made-up history (negative gates included)."""
    toy = {"step": [0, 10, 20, 30], "attn_gate_tanh": [[0.0, 0.0], [0.01, -0.2], [0.04, -0.3], [0.06, -0.3]]}
    for layer, threshold, want in [(0, 0.05, 30), (1, 0.05, 10), (0, 0.5, None)]:
        got = run_learner(first_step_above, toy, layer, threshold, what=f"your first_step_above(history, {layer}, {threshold})")
        if got == want and (want is not None or got is None):
            continue
        if (layer, want) == (1, 10) and got is None:
            fail("first_step_above misses gates that open negative: compare `abs(gate)` with the threshold.")
        if want is None:
            fail(f"when no gate passes the threshold the answer is None, yours is {got!r}: return None after the loop.")
        if got == toy["step"].index(want):
            fail(f"first_step_above returned the index {got} of the logged step, not the training step {want}: read "
                 "history['step'].")
        fail(f"first_step_above(history, {layer}, {threshold}) should be {want}, yours is {got!r}.")
    passed("first_step_above is right.")


def check_caption_format(caption_format) -> None:
    """Exercise "09.format"."""
    cases = [("a red circle", "colour_first"), ("a circle in red", "shape_first"), ("a yellow triangle", "colour_first"),
             ("a square in blue", "shape_first"), ("a circle red", None), ("a red", None), ("", None),
             ("a red circle in blue", None), ("a circle in square", None), ("the red circle", None)]
    for caption, want in cases:
        got = run_learner(caption_format, caption, what=f"your caption_format({caption!r})")
        if got != want:
            fail(f"caption_format({caption!r}) should be {want!r}, yours is {got!r}: check the number of words and that "
                 "each word is from the right list.")
    passed("caption_format is right.")
