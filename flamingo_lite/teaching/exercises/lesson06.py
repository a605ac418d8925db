"""Checks for lesson 06: the learner writes `GatedCrossAttentionBlock.forward`, then three exercises about its gates.

Each check runs the learner's code on a small input, compares it with the answer computed from the reference's
own sub-layers, and when it differs, with the usual mistakes computed on the same input (gates without tanh or
through a sigmoid, a residual missing, the feed-forward fed the block's input instead of the cross-attention's output,
the two gates swapped, a layer left ungated or gated by the other's gate, the cross-attention in the other mode, the
feed-forward left out or run first, the update returned without the input), so the verdict names the mistake; a
forward that changes its input x in place is named too. A gate that is not a trainable nn.Parameter is named before
anything runs, and a block whose own cross-attention or feed-forward is off is sent back to that layer's lesson.
"""
from __future__ import annotations

import copy

import torch

from ... import masks
from ...cross_attention import MaskedCrossAttention
from ...gated import GatedCrossAttentionBlock
from . import (Mistake, _check_modules_registered, _same, check_dtype_kept, check_layer, check_parameter_names,
               check_shapes_follow, compare, fail, passed, register_hints, register_nudges, run_learner, run_untouched, keep_rng,
               refuse_the_answer)

DIM, HEADS, DIM_HEAD = 16, 2, 8
ATTN_GATE, FF_GATE = 0.7, -0.4  # opened, different, and tanh(g) far from g: every mistake gives other numbers

register_hints({
    "06.init": "After super().__init__(): self.attn = MyMaskedCrossAttention(dim=dim, dim_head=dim_head, heads=heads, "
               "only_attend_immediate_media=only_attend_immediate_media), self.ff = MyFeedForward(dim, mult=ff_mult), "
               "and two gates, self.attn_gate and self.ff_gate, each nn.Parameter(torch.tensor([0.0])): shape (1,), "
               "starting closed.",
    "06.forward": "Two lines, each `x = x + <gate> * <layer>(...)`: first the cross-attention `self.attn(x, media, "
                  "media_locations)` times `self.attn_gate.tanh()`, then `self.ff(x)` on that new x times "
                  "`self.ff_gate.tanh()`. Keep the `x +` in both: the block adds to the text stream.",
    "06.slope": "d/da tanh(a) = 1 - tanh(a)^2: take `alpha.tanh()` and square it.",
    "06.who_learns": "`block.zero_grad()`, then `block(*inputs).pow(2).mean().backward()`, then keep the names from "
                     "`block.named_parameters()` whose `p.grad` is not None and has a value that is not 0.",
    "06.gate_gradient": "With both gates at 0: z = x, so dL/dz = 2 * (x - target) / x.numel(); and dz/d attn_gate = "
                        "block.attn(x, media, media_locations). Multiply them and `.sum()`.",
})
register_nudges({  # a first hint where the full one is the answer: hint(key), then hint(key, 2)
    "06.init": "The block is two of your earlier layers and two gates: your MaskedCrossAttention (pass the mode on),"
    " your FeedForward, and for each a gate that is a trainable nn.Parameter starting at 0, closed.",
    "06.forward": "The pseudo-code of the paper's Fig. 4: each layer's output is scaled by tanh of its gate and added to the "
    "text stream, the cross-attention first, then the feed-forward on the stream it updated.",
    "06.slope": "Write tanh(a) = sinh(a) / cosh(a), differentiate with the quotient rule, then write the result with "
    "tanh(a) alone.",
    "06.gate_gradient": "The chain rule: dL/d attn_gate adds up dL/dz * dz/d attn_gate over every number. With both gates at "
    "0, what is z? And what does tanh(attn_gate) multiply in z (the slope of tanh at 0 is 1)?",
    "06.who_learns": "Clear any old gradients, run one backward pass of a loss through the block, and read which "
    "parameters got a gradient that is not zero.",
})


def example_inputs(seed: int = 0):
    """The sentence of lessons 04-06 with random vectors: (x (1, 11, d), media (1, 2, 3, d), media_locations (1, 11))."""
    generator = torch.Generator().manual_seed(seed)
    tokens = "a photo of <image> a red circle <image> a blue square".split()
    media_locations = masks.media_locations_from_tokens(tokens).unsqueeze(0)  # (1, n)
    x = torch.randn(1, len(tokens), DIM, generator=generator)  # (1, n, d)
    media = torch.randn(1, 2, 3, DIM, generator=generator)  # (1, t, m, d)
    return x, media, media_locations


def _opened_reference(only_attend_immediate_media: bool = True) -> GatedCrossAttentionBlock:
    torch.manual_seed(1)
    reference = GatedCrossAttentionBlock(dim=DIM, dim_head=DIM_HEAD, heads=HEADS,
                                         only_attend_immediate_media=only_attend_immediate_media)
    with torch.no_grad():
        reference.attn_gate.fill_(ATTN_GATE)
        reference.ff_gate.fill_(FF_GATE)
    return reference


def _variants(reference, x, media, media_locations) -> dict:
    """The right output and the usual mistakes', from the reference's own sub-layers (b, n, d) each."""
    a, f = reference.attn_gate, reference.ff_gate
    attn, ff = reference.attn, reference.ff
    xattn = attn(x, media, media_locations)  # (b, n, d)
    y = x + a.tanh() * xattn  # (b, n, d)
    out = {"right": y + f.tanh() * ff(y)}
    y_raw = x + a * xattn
    out["no tanh"] = y_raw + f * ff(y_raw)
    out["no tanh on attn_gate"] = y_raw + f.tanh() * ff(y_raw)
    out["no tanh on ff_gate"] = y + f * ff(y)
    y0 = a.tanh() * xattn
    out["no first residual"] = y0 + f.tanh() * ff(y0)
    out["no second residual"] = f.tanh() * ff(y)
    out["no residuals"] = f.tanh() * ff(y0)
    out["ff on x"] = y + f.tanh() * ff(x)
    ys = x + f.tanh() * xattn
    out["gates swapped"] = ys + a.tanh() * ff(ys)
    out["ff not gated"] = y + ff(y)
    out["ff gated by attn_gate"] = y + a.tanh() * ff(y)
    y_open = x + xattn
    out["attn not gated"] = y_open + f.tanh() * ff(y_open)
    other = copy.deepcopy(attn)  # the same weights, in the other mode
    other.only_attend_immediate_media = not attn.only_attend_immediate_media
    y_other = x + a.tanh() * other(x, media, media_locations)
    out["mode not passed"] = y_other + f.tanh() * ff(y_other)
    yn = x + xattn
    out["no gates"] = yn + ff(yn)
    ya = x + a.tanh() * attn(x, media, None)
    out["no media_locations"] = ya + f.tanh() * ff(ya)
    out["no ff"] = y
    yf = x + f.tanh() * ff(x)  # the feed-forward first, the cross-attention reading its output
    out["ff first"] = yf + a.tanh() * attn(yf, media, media_locations)
    out["update only"] = out["right"] - x
    y_sig = x + a.sigmoid() * xattn
    out["sigmoid gates"] = y_sig + f.sigmoid() * ff(y_sig)
    return out


MESSAGES = {
    "no tanh": "the gates are used without tanh: multiply by `self.attn_gate.tanh()` and `self.ff_gate.tanh()`, "
               "not by the raw parameters.",
    "no tanh on attn_gate": "the cross-attention's gate is used without tanh: multiply by `self.attn_gate.tanh()`.",
    "no tanh on ff_gate": "the feed-forward's gate is used without tanh: multiply by `self.ff_gate.tanh()`.",
    "no first residual": "the first residual is missing: the cross-attention line must be `x = x + ...`, adding to "
                         "the text stream instead of replacing it.",
    "no second residual": "the second residual is missing: the feed-forward line must be `x = x + ...`.",
    "no residuals": "both residuals are missing: each line must add to x (`x = x + ...`), not replace it.",
    "ff on x": "the feed-forward reads the block's input: it must read x after the cross-attention was added "
               "(the two lines run one after the other, not side by side).",
    "gates swapped": "the two gates are swapped: `attn_gate` scales the cross-attention, `ff_gate` the feed-forward.",
    "ff not gated": "the feed-forward is not gated: multiply `self.ff(x)` by `self.ff_gate.tanh()` before adding it.",
    "ff gated by attn_gate": "the feed-forward is gated by attn_gate: its own gate is `self.ff_gate`, "
                             "`x = x + self.ff_gate.tanh() * self.ff(x)`.",
    "attn not gated": "the cross-attention is not gated: multiply `self.attn(x, media, media_locations)` by "
                      "`self.attn_gate.tanh()` before adding it.",
    "mode not passed": "the cross-attention runs in the other mode: pass the block's only_attend_immediate_media on, "
                       "`MyMaskedCrossAttention(..., only_attend_immediate_media=only_attend_immediate_media)`.",
    "no gates": "the gates are missing: multiply each layer's output by tanh of its gate before adding it.",
    "no media_locations": "the cross-attention was called without media_locations, so every word sees every "
                          "picture: pass them on, `self.attn(x, media, media_locations)`.",
    "no ff": "the feed-forward is left out: after the cross-attention line add "
             "`x = x + self.ff_gate.tanh() * self.ff(x)`.",
    "ff first": "the feed-forward runs before the cross-attention: first `x = x + self.attn_gate.tanh() * "
                "self.attn(x, media, media_locations)`, then the feed-forward on that new x.",
    "update only": "this is the update alone, without the block's input: the block returns `x` plus the gated "
                   "layers' outputs, so keep the `x +` (each line `x = x + ...`).",
    "sigmoid gates": "the gates go through a sigmoid: use tanh, `self.attn_gate.tanh()` and `self.ff_gate.tanh()`; "
                     "sigmoid(0) is 0.5, so closed gates would let half of each layer through, where tanh(0) = 0 "
                     "keeps the new block the identity.",
}


def _check_gates_train(block) -> None:
    """Each gate is an nn.Parameter that trains: a plain tensor attribute (or a buffer) is not among the block's
    parameters, so it gets no gradient and an optimizer never moves it."""
    parameters = dict(block.named_parameters())
    for gate in ("attn_gate", "ff_gate"):
        value = getattr(block, gate, None)
        if isinstance(value, torch.Tensor) and gate not in parameters:
            fail(f"your block's {gate} is a plain tensor, not an nn.Parameter, so it is not among the block's "
                 f"parameters and never trains: create it as self.{gate} = nn.Parameter(torch.tensor([0.0])).")
        if gate in parameters and not parameters[gate].requires_grad:
            fail(f"your block's {gate} has requires_grad=False, so it never trains: create it as "
                 f"nn.Parameter(torch.tensor([0.0])), which learns by default.")
        others = {p.dtype for name, p in parameters.items() if not name.endswith("_gate")}
        if gate in parameters and len(others) == 1 and parameters[gate].dtype not in others:
            fail(f"your block's {gate} is {parameters[gate].dtype}, its layers {others.pop()}: multiplying by it "
                 "changes the text stream's dtype; create it as nn.Parameter(torch.tensor([0.0])), in the default "
                 "dtype like the layers.")


def _check_sublayers(mine, reference, inputs) -> None:
    """The learner's own cross-attention and feed-forward, with the reference's weights, give the reference's numbers:
    a mistake inside one of them is named by its own lesson's check, not by the block's."""
    x, media, media_locations = inputs
    with torch.no_grad():
        attn = run_learner(mine.attn, x, media, media_locations, what="your block's self.attn(x, media, media_locations)")
        want = reference.attn(x, media, media_locations)  # (b, n, d)
        if not (isinstance(attn, torch.Tensor) and attn.shape == want.shape and torch.allclose(attn, want, atol=1e-5)):
            _swapped_sizes(attn, reference, inputs)
            fail("your block's cross-attention, self.attn (your MyMaskedCrossAttention from lesson 05), gives other "
                 "numbers than the reference's with the same weights: run lesson05.check_forward(MyMaskedCrossAttention) "
                 "in lesson 05, which names what differs.")
        ff = run_learner(mine.ff, x, what="your block's self.ff(x)")
        want = reference.ff(x)  # (b, n, d)
        if not (isinstance(ff, torch.Tensor) and ff.shape == want.shape and torch.allclose(ff, want, atol=1e-5)):
            fail("your block's feed-forward, self.ff (your MyFeedForward from lesson 03), gives other numbers than the "
                 "reference's with the same weights: run lesson03.check_feedforward(MyFeedForward) in lesson 03, which "
                 "names what differs.")


def _swapped_sizes(attn, reference, inputs) -> None:
    """Fail when the learner's cross-attention gives the numbers of one split into another number of heads (the
    weights' shapes are heads * dim_head either way, so they load): the block's constructor passed the sizes wrong,
    most often heads and dim_head crossed, and lesson 05's layer is not the one to fix."""
    from ..checker import _other_head_counts  # the checker imports the layers; keep this module light to import

    if not isinstance(attn, torch.Tensor):
        return
    kwargs = dict(dim=DIM, dim_head=DIM_HEAD, heads=HEADS, only_attend_immediate_media=reference.attn.only_attend_immediate_media)
    heads = _other_head_counts(MaskedCrossAttention, kwargs, reference.attn.state_dict(), inputs, attn, 1e-5, 1e-5)
    if heads is not None:
        why = ("heads and dim_head are crossed where the block builds it" if heads == DIM_HEAD else
               "the block builds it with other sizes than its own")
        fail(f"your block's cross-attention splits into {heads} heads of width {HEADS * DIM_HEAD // heads}, not {HEADS} "
             f"of width {DIM_HEAD}: {why}. Pass each by name, "
             "`MyMaskedCrossAttention(dim=dim, dim_head=dim_head, heads=heads, ...)`.")


def check_forward(block_class) -> None:
    """Step "06.forward": the learner's block, with the reference's weights and opened gates, on both modes."""
    refuse_the_answer(block_class, (GatedCrossAttentionBlock,))
    x, media, media_locations = example_inputs()
    for mode in (True, False):
        reference = _opened_reference(mode)
        mine = run_learner(block_class, dim=DIM, dim_head=DIM_HEAD, heads=HEADS, only_attend_immediate_media=mode,
                           what="building your block")
        _check_gates_train(mine)
        _check_other_defaults(mine)
        _check_modules_registered(mine, "your block")  # layers in a plain list: named before the missing names
        check_parameter_names(mine, reference, what="your block", parts="attn, attn_gate, ff, ff_gate")
        # the names agree; a shape that differs is named (load_state_dict would quietly load a (1,) gate into ())
        check_shapes_follow(mine, reference, "your block", _shape_advice)
        mine.load_state_dict(reference.state_dict())
        with torch.no_grad():
            got = run_untouched(mine, x, media, media_locations, what="your block's forward",
                                names=("x", "media", "media_locations"))
            variants = _variants(reference, x, media, media_locations)
        mistakes = [Mistake(name, variants[name], MESSAGES[name]) for name in MESSAGES]
        what = f"your block (gates opened to {ATTN_GATE} and {FF_GATE})"
        if isinstance(got, torch.Tensor) and not any(_same(got.float(), v.float(), 1e-5, 1e-4) for v in variants.values()):
            _check_sublayers(mine, reference, (x, media, media_locations))  # no mistake of the block's own: a sub-layer's?
        compare(got, variants["right"], what=what, mistakes=mistakes)
        _check_gradients(mine, reference, (x, media, media_locations), what)
        # beyond the one-sentence example: a batch of 3, more media than markers, a row with no marker
        check_layer(mine, reference, (x, media, media_locations), what=what, quiet=True, mistakes=_known_mistakes,
                    check_defaults=False)  # the defaults are named below, each in its own words
    closed = run_learner(block_class, dim=DIM, dim_head=DIM_HEAD, heads=HEADS, what="building your block")
    _check_default_mode(closed, x, media, media_locations)
    for gate in ("attn_gate", "ff_gate"):
        value = getattr(closed, gate, None)
        if isinstance(value, torch.Tensor) and bool((value != 0).any()):
            said = [float(f"{v:.4g}") for v in value.detach().flatten().tolist()]  # 0.01, not 0.009999999776482582
            fail(f"your block's {gate} starts at {said}: create it closed, "
                 "nn.Parameter(torch.tensor([0.0])), so the new block starts as the identity.")
    _check_ff_mult(block_class)
    with torch.no_grad():
        start = run_learner(closed, x, media, media_locations, what="your block's forward")
    if not torch.equal(start, x):
        fail("with both gates at 0 your block does not return x bit for bit: the gates must multiply each layer's "
             "output (tanh(0) = 0), and nothing else may be added.")
    passed("your GatedCrossAttentionBlock, constructor and forward, matches the reference in both modes, and is the "
           "identity with closed gates.")


def _known_mistakes(reference, x, media, media_locations) -> list:
    variants = _variants(reference, x, media, media_locations)
    return [Mistake(name, variants[name], MESSAGES[name]) for name in MESSAGES]


def _check_other_defaults(block) -> None:
    """A default size other than the reference's (dim_head, heads or ff_mult), named before the shapes it changes;
    the mode's default is named by _check_default_mode, in its own words."""
    from ..checker import _defaults_problem  # the checker imports the layers; keep this module light to import

    problem = _defaults_problem(block, "your block", "the reference", GatedCrossAttentionBlock,
                                skip=("only_attend_immediate_media",))
    if problem is not None:
        fail(problem.message.removeprefix("✗ "))


def _check_default_mode(block, x, media, media_locations) -> None:
    """A block built without only_attend_immediate_media runs in the immediate mode, the paper's choice."""
    block = copy.deepcopy(block)
    block.load_state_dict(_opened_reference(True).state_dict())
    with torch.no_grad():
        got = run_learner(block, x, media, media_locations, what="your block's forward")
        all_previous = _opened_reference(False)(x, media, media_locations)  # (1, n, d)
    if isinstance(got, torch.Tensor) and _same(got.float(), all_previous, 1e-5, 1e-4):
        fail("your block built without only_attend_immediate_media runs in the all-previous mode: keep the "
             "constructor's default, only_attend_immediate_media=True, the paper's choice (Sec. 2.3 and Fig. 7), "
             "which every later lesson assumes when it builds a block without saying.")


def _check_gradients(mine, reference, inputs, what) -> None:
    """With the gates open every parameter trains: a backward pass through the learner's block gives each one the
    reference's gradient (a .detach() or torch.no_grad() in forward gives the right numbers and trains nothing)."""
    from ..checker import _gradient_problem  # the checker imports the layers; keep this module light to import

    problem = _gradient_problem(mine, reference, what, "the reference", inputs, 0, 1e-5, 1e-4)
    if problem is not None:
        fail(problem.message.removeprefix("✗ "))


def _shape_advice(name: str) -> str:
    if name.endswith("gate"):
        return ("create each gate as nn.Parameter(torch.tensor([0.0])), shape (1,) as in the reference, so that the "
                "weights load both ways by name.")
    return "build each layer with the constructor's arguments, as the reference does."


def _check_ff_mult(block_class) -> None:
    """Built with ff_mult=2, every parameter has the reference's shape: a feed-forward fixed at 4x fails here."""
    call = f"{block_class.__name__}(dim={DIM}, ..., ff_mult=2)"
    with torch.random.fork_rng(devices=[]):  # building draws random weights: the lesson's own draws stay as they were
        mine = run_learner(block_class, dim=DIM, dim_head=DIM_HEAD, heads=HEADS, ff_mult=2, what=call)
        reference = GatedCrossAttentionBlock(dim=DIM, dim_head=DIM_HEAD, heads=HEADS, ff_mult=2)
    check_shapes_follow(mine, reference, call, "pass ff_mult on to the feed-forward, MyFeedForward(dim, mult=ff_mult).")


_BY_HAND = ("it asks autograd (backward or torch.autograd.grad), which the check runs without gradients: this "
            "exercise is the derivative worked out by hand, the formula of the cell above; autograd is what the "
            "check compares it with.")
_AUTOGRAD = {"does not require grad": _BY_HAND, "grad_fn": _BY_HAND, "does not have a grad": _BY_HAND}


def check_tanh_slope(tanh_slope) -> None:
    """Exercise "06.slope", run without gradients: a slope asked of autograd is named."""
    alpha = torch.tensor([-3.0, -0.5, 0.0, 0.25, 2.0], requires_grad=True)
    alpha.tanh().sum().backward()
    a = alpha.detach()
    with torch.no_grad():
        got = run_untouched(tanh_slope, a, what="your tanh_slope(alpha)", names=("alpha",), advice=_AUTOGRAD,
                            fix="write `alpha.tanh()`, not `alpha.tanh_()`, which makes a new tensor.")
    mistakes = [
        Mistake("no tanh", 1 - a**2, "this is 1 - alpha^2: the slope is 1 - tanh(alpha)^2, square `alpha.tanh()`."),
        Mistake("tanh itself", a.tanh(), "this is tanh(alpha) itself, not its slope 1 - tanh(alpha)^2."),
        Mistake("no square", 1 - a.tanh(), "the square is missing: the slope is 1 - tanh(alpha)**2."),
        Mistake("1 / cosh", 1 / a.cosh(), "this is 1 / cosh(alpha), without the square: the slope is "
                "1 / cosh(alpha)**2, which is 1 - tanh(alpha)**2."),
        Mistake("square outside", (1 - a.tanh()) ** 2, "this is (1 - tanh(alpha))**2: square tanh(alpha) alone, "
                "1 - alpha.tanh() ** 2."),
        Mistake("times 2", 1 - 2 * a.tanh(), "this is 1 - 2 * tanh(alpha): `* 2` where the square is `** 2`."),
        Mistake("tanh of the square", 1 - (a**2).tanh(), "this is 1 - tanh(alpha**2): take tanh first, then "
                "square it, 1 - alpha.tanh() ** 2."),
        Mistake("plus", 1 + a.tanh() ** 2, "this is 1 + tanh(alpha)**2: the slope subtracts the square, "
                "1 - tanh(alpha)**2."),
        Mistake("the square alone", a.tanh() ** 2, "this is tanh(alpha)**2 alone: the slope is 1 minus it."),
    ]
    check_dtype_kept(got, a, "your tanh_slope(alpha)", inputs="alpha",
                     fix="compute in alpha's dtype (no .double() or .float()), so the slope fits the layer it serves.")
    if (isinstance(got, torch.Tensor) and got.shape == a.shape and not torch.allclose(got, alpha.grad, atol=1e-6, rtol=1e-6)
            and torch.allclose(got, alpha.grad, atol=1e-3)):
        fail("your tanh_slope is close to the slope but not equal to it (off by up to "
             f"{float((got - alpha.grad).abs().max()):.1e}): a difference quotient such as (tanh(a + h) - tanh(a - h)) "
             "/ 2h only approximates it; the exercise is the derivative itself, 1 - tanh(alpha)**2.")
    compare(got, alpha.grad, what="your tanh_slope", mistakes=mistakes, atol=1e-6)
    passed("tanh_slope is right: at alpha = 0 the slope is exactly 1.")


def _learning(block, inputs) -> list:
    """The sorted names of `block`'s parameters that get a gradient, by autograd on the reference built with its
    weights (the learner's block and its gradients are left alone)."""
    with torch.random.fork_rng(devices=[]):  # building draws random weights: the lesson's own draws stay as they were
        reference = GatedCrossAttentionBlock(dim=DIM, dim_head=DIM_HEAD, heads=HEADS)
    try:
        reference.load_state_dict(block.state_dict())
    except RuntimeError:  # names or shapes that are not the reference's: the block's own check says which
        fail("your block's parameters are not the reference's: run lesson06.check_forward on your block first, it "
             "names what differs.")
    reference(*inputs).pow(2).mean().backward()
    return sorted(n for n, p in reference.named_parameters() if p.grad is not None and bool((p.grad != 0).any()))


def _check_block_learns(block, inputs, want) -> None:
    """The learner's block itself gives gradient to what the reference's would: if not, the block is what is wrong,
    and the learner's params_with_gradient is not blamed for it."""
    own = copy.deepcopy(block)  # its gradients are the check's, not the learner's
    own.zero_grad(set_to_none=True)
    with torch.enable_grad():
        run_learner(lambda: own(*inputs).pow(2).mean().backward(), what="a backward pass through your block")
    learning = sorted(n for n, p in own.named_parameters() if p.grad is not None and bool((p.grad != 0).any()))
    missing = [n for n in want if n not in learning]
    if missing:
        fail(f"with attn_gate opened, your block gives {', '.join(missing)} no gradient, where the reference's "
             "forward would: your block's forward cuts autograd (a .detach() or torch.no_grad()?), so those weights "
             "would never train. Run lesson06.check_forward(MyGatedCrossAttentionBlock), which names it; your "
             "params_with_gradient is not the problem.")


def _measured(params_with_gradient, block, inputs, want) -> list:
    """The learner's answer on `block`, a list; the mistakes any answer can show (every name, unsorted) are named."""
    before = {name: p.detach().clone() for name, p in block.named_parameters()}
    got = run_learner(params_with_gradient, block, inputs, what="your params_with_gradient(block, inputs)")
    moved = [name for name, p in block.named_parameters() if not torch.equal(p.detach(), before[name])]
    if moved:
        fail(f"your params_with_gradient changed the block's parameters ({', '.join(moved[:3])}"
             f"{', ...' if len(moved) > 3 else ''}): an optimizer step or an in-place change; it must only read which "
             "gradients are not 0, leaving the weights as they were.")
    if not isinstance(got, list):
        fail(f"params_with_gradient returned a {type(got).__name__}: return a sorted list of parameter names.")
    got = list(got)
    if not all(isinstance(name, str) for name in got):
        fail("params_with_gradient must return the parameters' names (strings, from block.named_parameters()), not "
             "the parameters themselves.")
    if set(got) == {n for n, _ in block.named_parameters()} and set(want) != set(got):
        fail("every parameter is listed: keep only those whose gradient is not all zeros "
             "(`p.grad is not None and (p.grad != 0).any()`).")
    if sorted(got) == want and got != want:
        fail(f"the names are right but not in sorted order ({got}): return `sorted(...)`.")
    return got


def check_params_with_gradient(params_with_gradient, block_class) -> list:
    """Exercise "06.who_learns": at the start only the gates; with the attention gate open, the attention too; with it
    closed again, only the gates once more (gradients left over from the call before would show here)."""
    inputs = example_inputs()
    torch.manual_seed(0)
    fresh = run_learner(block_class, dim=DIM, dim_head=DIM_HEAD, heads=HEADS, what="building your block")
    _check_gates_train(fresh)
    gates = ["attn_gate", "ff_gate"]
    got = _measured(params_with_gradient, fresh, inputs, gates)
    if got != gates:
        fail(f"with closed gates only the gates get a gradient, {gates}; yours is {got}: run backward on "
             "`block(*inputs).pow(2).mean()` and keep the names whose `p.grad` is not None and not all 0.")
    with torch.no_grad():
        fresh.attn_gate.fill_(0.5)
    want = _learning(fresh, inputs)
    _check_block_learns(fresh, inputs, want)
    opened = _measured(params_with_gradient, fresh, inputs, want)
    if opened and all("." not in name for name in opened) and any("." in name for name in want):
        fail(f"your params_with_gradient gives {opened}, the top-level parts: return every parameter's full name from "
             "`block.named_parameters()`, such as 'attn.to_q.weight'.")
    if "attn.to_q.weight" not in opened:
        fail("with attn_gate opened, the cross-attention's weights must get a gradient too: does your function run a "
             "new forward and backward pass each time?")
    if opened != want:
        fail(f"with attn_gate opened the answer is {want}; yours is {opened}: keep every parameter whose gradient is "
             "not all 0 after one forward and backward pass.")
    with torch.no_grad():
        fresh.attn_gate.zero_()
    again = _measured(params_with_gradient, fresh, inputs, gates)
    if again != gates:
        left_over = [n for n in again if n not in gates and n in opened]
        if left_over:
            fail(f"with attn_gate closed again, {', '.join(left_over)} still have the gradient of the call before: "
                 "backward adds to p.grad, so clear the old gradients (`block.zero_grad()`) before the backward pass.")
        fail(f"with attn_gate closed again only the gates get a gradient, {gates}; yours is {again}.")
    passed(f"params_with_gradient is right: with attn_gate opened, {len(opened)} parameters learn.")
    return opened


def check_attn_gate_gradient(attn_gate_gradient, block_class) -> tuple:
    """Exercise "06.gate_gradient": the chain rule by hand against autograd."""
    inputs = example_inputs()
    torch.manual_seed(0)
    closed = run_learner(block_class, dim=DIM, dim_head=DIM_HEAD, heads=HEADS, what="building your block")
    _check_gates_train(closed)
    goal = torch.randn(inputs[0].shape, generator=torch.Generator().manual_seed(5))  # (b, n, d)
    (closed(*inputs) - goal).pow(2).mean().backward()
    if closed.attn_gate.grad is None or closed.ff_gate.grad is None:  # the block, not this exercise, is wrong
        fail("your block's gates get no gradient (a .detach(), .data or no_grad on them), so there is no autograd "
             "answer to compare with: run lesson06.check_forward on your block first, then come back here.")
    want = closed.attn_gate.grad.reshape(())  # ()
    n = inputs[0].numel()
    with torch.no_grad():  # the chain rule on the wrong layer's output, or without the mask
        x, media, _ = inputs
        unmasked = (2 * (x - goal) / n * closed.attn(x, media, None)).sum()  # ()
    got = _by_hand(attn_gate_gradient, closed, inputs, goal, "your attn_gate_gradient(block, inputs, target)")
    if got is None:
        fail(f"attn_gate_gradient returned None (block.attn_gate.grad before any backward pass?): {_BY_HAND}")
    got = torch.as_tensor(got, dtype=torch.float32).reshape(-1)
    if got.numel() != 1:
        fail(f"attn_gate_gradient returned {got.numel()} numbers: sum over every number to get one.")
    mistakes = [
        Mistake("sign", -want, "the sign is flipped: dL/dz = 2 * (z - target) / N, with z = x."),
        Mistake("no mean", want * n, "the 1/N of the mean is missing: divide by x.numel()."),
        Mistake("no 2", want / 2, "the factor 2 of the square's derivative is missing."),
        Mistake("mean, not sum", want / n, "the products are averaged, .mean(), where the chain rule adds them up: "
                "dL/d attn_gate is the .sum() over every number of dL/dz * dz/d attn_gate."),
        Mistake("ff_gate's gradient", closed.ff_gate.grad.reshape(()), "this is ff_gate's gradient, from block.ff(x): "
                "dz/d attn_gate is the cross-attention's output, block.attn(x, media, media_locations)."),
        Mistake("no media_locations", unmasked, "the cross-attention was run without media_locations: "
                "dz/d attn_gate is block.attn(x, media, media_locations), with the mask."),
    ]
    compare(got.reshape(()), want, what="your attn_gate_gradient", mistakes=mistakes, atol=1e-7, rtol=1e-4)
    _check_gate_gradient_in_a_batch(attn_gate_gradient, closed)
    passed(f"attn_gate_gradient is right: by hand {float(got):.4f}, autograd {want.item():.4f}")
    return float(got), want.item()


def _by_hand(attn_gate_gradient, closed, inputs, goal, what: str):
    """The learner's answer, on a copy of the block without the gradients the check computed (the answer must not
    read them), run without gradients (a gradient asked of autograd is named), on copies of the inputs and the
    target: one changed in place (`x.sub_(target)`) is named, since the caller's tensor would change with it."""
    given = copy.deepcopy(closed)
    given.zero_grad(set_to_none=True)
    with torch.no_grad():  # run_untouched: on copies, so that an input changed in place is named
        return run_untouched(lambda x, media, media_locations, target: attn_gate_gradient(
                                 given, (x, media, media_locations), target),
                             *inputs, goal, what=what, advice=_AUTOGRAD, trains=False,
                             names=("x (inputs[0])", "media (inputs[1])", "media_locations (inputs[2])", "target"),
                             fix="write `x - target`, which makes a new tensor (in a training step the caller's x is "
                                 "the batch itself).")


def _check_gate_gradient_in_a_batch(attn_gate_gradient, closed) -> None:
    """The same answer on a batch of 2 (the lesson's sentence and a second one): a gradient worked out on the first
    sample only, or averaged over one sample's numbers, is right on batch 1 and wrong here."""
    x, media, media_locations = example_inputs()
    other_x, other_media, _ = example_inputs(seed=1)
    inputs = (torch.cat([x, other_x]), torch.cat([media, other_media]), media_locations.repeat(2, 1))  # batch of 2
    goal = torch.randn(inputs[0].shape, generator=torch.Generator().manual_seed(6))  # (2, n, d)
    block = copy.deepcopy(closed)
    block.zero_grad(set_to_none=True)
    (block(*inputs) - goal).pow(2).mean().backward()
    want = block.attn_gate.grad.reshape(())  # ()
    got = _by_hand(attn_gate_gradient, closed, inputs, goal, "your attn_gate_gradient(block, inputs, target) on a batch of 2")
    got = torch.as_tensor(got, dtype=torch.float32).reshape(-1)
    if got.numel() != 1 or not torch.allclose(got.reshape(()), want, atol=1e-7, rtol=1e-4):
        fail(f"attn_gate_gradient is right on one sentence but not on a batch of 2 (yours {got.flatten()[:1].tolist()}, "
             f"autograd {want.item():.6f}): the mean runs over every number of the batch, x.numel(), and the sum "
             "too; index no sample (x[0]) and write in no size.")


keep_rng(globals())  # no check moves the lesson's random numbers
