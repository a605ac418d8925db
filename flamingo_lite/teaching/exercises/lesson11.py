"""Checks for lesson 11's two exercises.

- `gated_layers(depth, every, codebase)`: the language-model layers that get a gated cross-attention block in
  front of them in IDEFICS (`i % K == 0`) and in OpenFlamingo (`(i + 1) % K == 0`). The answer comes from the tiny
  model's own `xattn_layers`; a wrong answer is compared with the usual mistakes on the same cases (the two
  codebases swapped, both given the same rule, layers counted from 1, OpenFlamingo's shift taken the wrong way,
  every layer gated).
- `from_idefics_keys(sd)`: an IDEFICS gated layer's `state_dict` renamed into flamingo_lite's. The answer is
  `interop.from_idefics(sd).state_dict()`; a wrong answer is compared with the usual mistakes on the same weights
  (keys and values swapped in `to_kv`, SwiGLU's halves swapped, the two norms swapped, per-channel gates left
  `(1, 1, d)`), so the verdict names the mistake; a second layer with scalar gates `(1,)` names a `.squeeze()`.
"""
from __future__ import annotations

import torch

from ... import interop
from ...tiny.model import xattn_layers
from . import fail, passed, record_verdicts, register_hints, register_nudges, run_learner

CODEBASES = {"idefics": "first", "open_flamingo": "open_flamingo"}  # codebase -> the tiny model's xattn_placement
CASES = [(8, 4), (7, 3), (6, 1), (5, 2), (3, 4)]  # (depth, every): one with K = 1, one with K > depth

register_hints({
    "11.keys": "Start from `{}` and fill it key by key with the table above: e.g. `out['attn.norm.weight'] = "
               "sd['input_layernorm.weight']`. `to_kv` is `torch.cat([k_proj, v_proj])` (keys first, along dim 0), "
               "`ff.1` is `torch.cat([gate_proj, up_proj])`, and each gate becomes 1-D with `.reshape(-1)`.",
    "11.placement": "Loop over the layer indices `i` in `range(depth)` (they start at 0). IDEFICS keeps `i` when "
                    "`i % every == 0`; OpenFlamingo when `(i + 1) % every == 0`. Return a list of ints.",
})


def _rule(keep, start: int = 0) -> dict:
    """{(depth, every, codebase): indices i in start .. start + depth - 1 with keep(i, every, codebase)}."""
    return {(depth, every, cb): [i for i in range(start, start + depth) if keep(i, every, cb)]
            for depth, every in CASES for cb in CODEBASES}


def _mistakes() -> list[tuple[str, dict]]:
    return [
        ("the two codebases are swapped: IDEFICS puts a block before layers 0, K, 2K, ... (`i % every == 0`), "
         "OpenFlamingo before layers K-1, 2K-1, ... (`(i + 1) % every == 0`).",
         _rule(lambda i, k, cb: (i + (cb == "idefics")) % k == 0)),
        ("both codebases give the same layers: OpenFlamingo's rule is shifted by one, `(i + 1) % every == 0`.",
         _rule(lambda i, k, cb: i % k == 0)),
        ("both codebases give the same layers: IDEFICS's rule is `i % every == 0`, with a block before layer 0.",
         _rule(lambda i, k, cb: (i + 1) % k == 0)),
        ("the indices are counted from 1: layer indices run over `range(depth)`, 0 to depth - 1.",
         _rule(lambda i, k, cb: (i + (cb == "open_flamingo")) % k == 0, start=1)),
        ("OpenFlamingo's shift goes the wrong way: it is `(i + 1) % every == 0` (layers K-1, 2K-1, ...), not "
         "`(i - 1) % every == 0` (layers 1, K+1, ...).",
         _rule(lambda i, k, cb: (i - (cb == "open_flamingo")) % k == 0)),
        ("every layer gets a block: keep only the layers whose index passes the `% every` test.",
         _rule(lambda i, k, cb: True)),
    ]


def check_gated_layers(fn) -> dict:
    """fn(depth, every, codebase) -> list of layer indices; passes when it agrees with the tiny model on every case."""
    want = {(depth, every, cb): xattn_layers(depth, every, placement)
            for depth, every in CASES for cb, placement in CODEBASES.items()}
    got = {}
    for depth, every, cb in want:
        out = run_learner(fn, depth, every, cb, what=f"your gated_layers({depth}, {every}, {cb!r})")
        if not isinstance(out, (list, tuple)) or not all(isinstance(i, int) and not isinstance(i, bool) for i in out):
            fail(f"gated_layers({depth}, {every}, {cb!r}) returned {out!r}: return a list of layer indices (ints).")
        got[(depth, every, cb)] = sorted(out)
    if got == want:
        passed("gated_layers is right: with depth 8 and every 4, IDEFICS gates layers [0, 4], OpenFlamingo [3, 7].")
        return got
    for message, wrong in _mistakes():
        if got == wrong:
            fail(f"gated_layers: {message}")
    key = next(k for k in want if got[k] != want[k])
    depth = key[0]
    outside = [i for i in got[key] if not 0 <= i < depth]
    if outside:
        fail(f"gated_layers{key} returned {got[key]}, with {outside[0]}, which is no layer: a model of depth {depth} "
             f"has layers 0 to {depth - 1}, so i runs over `range(depth)` (no `range(depth + 1)`, no index past the end).")
    if len(set(got[key])) != len(got[key]):
        fail(f"gated_layers{key} returned {got[key]}, with a layer listed twice: each layer gets at most one block.")
    fail(f"gated_layers{key} returned {got[key]}, expected {want[key]}; no usual mistake matches, so check the "
         "rule for that codebase and the range of i.")


# ---------------------------------------------------------------- the IDEFICS key map

DIM, DIM_VISUAL, HEADS, DIM_HEAD, HIDDEN = 16, 24, 2, 8, 40


def idefics_state_dict(seed: int = 0, *, gate: str = "per_channel") -> dict:
    """A random IDEFICS gated-layer state_dict (width 16, 2 heads of 8, media 24, MLP 40), with per-channel gates
    `(1, 1, d)` (IDEFICS's alpha_type="vector") or scalar ones `(1,)` (gate="scalar", alpha_type="float")."""
    gates = (1, 1, DIM) if gate == "per_channel" else (1,)
    shapes = {
        "input_layernorm.weight": (DIM,),
        "cross_attn.q_proj.weight": (HEADS * DIM_HEAD, DIM),
        "cross_attn.k_proj.weight": (HEADS * DIM_HEAD, DIM_VISUAL),
        "cross_attn.v_proj.weight": (HEADS * DIM_HEAD, DIM_VISUAL),
        "cross_attn.o_proj.weight": (DIM, HEADS * DIM_HEAD),
        "alpha_cross_attn": gates,
        "alpha_dense": gates,
        "post_attention_layernorm.weight": (DIM,),
        "mlp.gate_proj.weight": (HIDDEN, DIM),
        "mlp.up_proj.weight": (HIDDEN, DIM),
        "mlp.down_proj.weight": (DIM, HIDDEN),
    }
    generator = torch.Generator().manual_seed(seed)
    return {name: torch.randn(shape, generator=generator) for name, shape in shapes.items()}


def _key_mistakes(sd: dict, right: dict) -> list[tuple[str, dict]]:
    k, v = sd["cross_attn.k_proj.weight"], sd["cross_attn.v_proj.weight"]
    gate, up = sd["mlp.gate_proj.weight"], sd["mlp.up_proj.weight"]
    return [
        ("`attn.to_kv` has the values first: it is `torch.cat([k_proj, v_proj])`, keys then values (the layer splits "
         "it in two halves, keys first).", dict(right, **{"attn.to_kv.weight": torch.cat([v, k])})),
        ("`ff.1` has `up_proj` first: SwiGLU's weight is `torch.cat([gate_proj, up_proj])`, the gate half first.",
         dict(right, **{"ff.1.weight": torch.cat([up, gate])})),
        ("the two norms are swapped: `input_layernorm` is the cross-attention's norm (`attn.norm`), "
         "`post_attention_layernorm` the feed-forward's (`ff.0`).",
         dict(right, **{"attn.norm.weight": sd["post_attention_layernorm.weight"],
                        "ff.0.weight": sd["input_layernorm.weight"]})),
        ("the gates are swapped: `alpha_cross_attn` is `attn_gate`, `alpha_dense` is `ff_gate`.",
         dict(right, **{"attn_gate": right["ff_gate"], "ff_gate": right["attn_gate"]})),
    ]


def _same_dict(got: dict, want: dict) -> bool:
    return set(got) == set(want) and all(
        isinstance(got[k], torch.Tensor) and got[k].shape == want[k].shape and torch.equal(got[k], want[k]) for k in want
    )


def check_from_idefics_keys(fn) -> dict:
    """fn(IDEFICS state_dict) -> flamingo_lite state_dict; passes when a GatedCrossAttentionBlock loads it strictly
    and it holds what `interop.from_idefics` puts there, for a layer with per-channel gates and then for one with
    scalar gates, (1,) on both sides (a `.squeeze()` makes those 0-d and passes on per-channel gates alone). Returns
    the learner's conversion of the per-channel layer."""
    got = _check_conversion(fn, idefics_state_dict())
    _check_conversion(fn, idefics_state_dict(1, gate="scalar"), case=" on a layer with scalar gates",
                      advice=_SCALAR_GATE_ADVICE)
    passed("from_idefics_keys is right: a GatedCrossAttentionBlock(norm='rmsnorm', ff_activation='swiglu', "
           "gate='per_channel') loads it with strict=True.")
    return got


# a gate indexed or reshaped to the per-channel shape raises on a scalar gate (1,)
_SCALAR_GATE_ADVICE = {
    "too many indices": "a scalar gate is (1,), with one axis: `.reshape(-1)` makes both (1,) and (1, 1, d) 1-D, "
                        "without indexing.",
    "invalid index of a 0-dim tensor": "a scalar gate is (1,), with one axis: `.reshape(-1)` makes both (1,) and "
                                       "(1, 1, d) 1-D, without indexing.",
    "is invalid for input of size 1": "a scalar gate is (1,), one number: `.reshape(-1)` makes both (1,) and "
                                      "(1, 1, d) 1-D, whatever their width.",
}


def _check_conversion(fn, sd: dict, *, case: str = "", advice: dict | None = None) -> dict:
    """The learner's conversion of `sd` against `interop.from_idefics`'s; fails naming what differs, the usual
    mistakes by name. case: which layer, for the verdict (" on a layer with scalar gates"); advice: for
    `run_learner`. Returns the learner's dict."""
    what = f"from_idefics_keys{case}"
    given = dict(sd)  # the learner's copy
    got = run_learner(fn, given, what=f"your from_idefics_keys(sd){case}", advice=advice)
    if set(given) != set(sd) or any(given[k] is not v for k, v in sd.items() if k in given):
        fail("your from_idefics_keys changed the state_dict it was given (`sd.pop(...)`, `del sd[...]` or an "
             "assignment into it): the caller's dict changes too, and a second conversion of the same weights fails; "
             "read it, `sd[key]`, and build a new dict.")
    if not isinstance(got, dict):
        fail(f"from_idefics_keys returned a {type(got).__name__}: return a dict of tensors, flamingo_lite key -> tensor.")
    layer = interop.from_idefics(dict(sd), heads=HEADS)  # the reference conversion
    right = {k: v.detach() for k, v in layer.state_dict().items()}
    missing, unknown = sorted(set(right) - set(got)), sorted(set(got) - set(right))
    if unknown:
        fail(f"{what} returned key {unknown[0]!r}, which a flamingo_lite GatedCrossAttentionBlock does not "
             "have: use the names in the table's right-hand column.")
    if missing:
        fail(f"{what} has no {missing[0]!r}: every flamingo_lite key needs a value (see the table).")
    for key in right:
        if not isinstance(got[key], torch.Tensor):
            fail(f"{what}: {key!r} is a {type(got[key]).__name__}, not a tensor.")
        if got[key].shape != right[key].shape:
            if key in ("attn.to_kv.weight", "ff.1.weight"):  # the two weights made of two IDEFICS tensors
                extra = " check which tensors you concatenate, and along dim 0."
            elif key not in ("attn_gate", "ff_gate"):
                extra = (" check which IDEFICS tensor the table maps to it: its shape is (outputs, inputs), so a "
                         "tensor of another projection, or one transposed, has another shape.")
            elif got[key].dim() == 0:  # a (1,) gate squeezed
                extra = (" a scalar gate is (1,) in IDEFICS and in flamingo_lite, and `.squeeze()` drops its one axis: "
                         "`.reshape(-1)` makes both (1,) and (1, 1, d) 1-D.")
            else:
                extra = " the per-channel gates are (1, 1, d) in IDEFICS and (d,) in flamingo_lite: `.reshape(-1)`."
            fail(f"{what}: {key!r} has shape {tuple(got[key].shape)}, expected {tuple(right[key].shape)};" + extra)
    got = {k: v.detach() for k, v in got.items()}
    if _same_dict(got, right):
        layer.load_state_dict(got, strict=True)
        return got
    for message, wrong in _key_mistakes(sd, right):
        if _same_dict(got, wrong):
            fail(f"{what}: {message}")
    key = next(k for k in right if not torch.equal(got[k], right[k]))
    fail(f"{what}: {key!r} holds other numbers than the answer; no usual mistake matches, so check which "
         "IDEFICS tensor the table maps to it.")


register_nudges({  # first hints for the steps whose full hint is the answer
    "11.keys": "Follow the table above name by name. Two of flamingo_lite's weights are two of IDEFICS's joined "
    "along the output axis, keys before values and gate before up, and the gates change shape.",
    "11.placement": "The layer indices start at 0. The two codebases use the same frequency but count differently: one "
    "keeps the layer whose index is a multiple of it, the other the layer whose position, counted from 1, "
    "is.",
})


record_verdicts(globals())  # failed_checks(lesson11) sees every check's last verdict
