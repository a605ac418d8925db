"""Checks for lesson 10: the learner writes `gated_layers(depth, every, codebase)`, the language-model layers that
get a gated cross-attention block in front of them in IDEFICS (`i % K == 0`) and in OpenFlamingo
(`(i + 1) % K == 0`).

The answer comes from the tiny model's own `xattn_layers`; when the learner's lists differ, the check compares
them with the usual mistakes on the same cases (the two codebases swapped, both given the same rule, layers counted
from 1, OpenFlamingo's shift taken the wrong way, every layer gated), so the verdict names the mistake.
"""
from __future__ import annotations

from ...tiny.model import xattn_layers
from . import fail, passed, register_hints, run_learner

CODEBASES = {"idefics": "first", "open_flamingo": "open_flamingo"}  # codebase -> the tiny model's xattn_placement
CASES = [(8, 4), (7, 3), (6, 1), (5, 2), (3, 4)]  # (depth, every): one with K = 1, one with K > depth

register_hints({
    "10.placement": "Loop over the layer indices `i` in `range(depth)` (they start at 0). IDEFICS keeps `i` when "
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
    fail(f"gated_layers{key} returned {got[key]}, expected {want[key]}; no usual mistake matches, so check the "
         "rule for that codebase and the range of i.")
