"""Mutation tests of the exercise checks of lessons 06-10: each check fails on the stub with a message, passes
with the solution, and names each mistake it claims to recognise when fed a wrong implementation."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

import flamingo_lite
from flamingo_lite import masks
from flamingo_lite.teaching.exercises import ExerciseFailed, hint
from flamingo_lite.teaching.exercises import lesson06, lesson08, lesson09, lesson10
from flamingo_lite.tiny.language_model import TinyLM
from flamingo_lite.tiny.model import Flamingo, FlamingoConfig
from flamingo_lite.tiny.vision import VisionEncoder


def stub(*args, **kwargs):
    raise NotImplementedError("Your turn")


def fails(check, *args, match: str, **kwargs):
    with pytest.raises(ExerciseFailed, match=match):
        check(*args, **kwargs)


# ---------------------------------------------------------------------------------------------------------- 06

def block_class(body):
    class Block(nn.Module):
        def __init__(self, *, dim, dim_head=64, heads=8, ff_mult=4, only_attend_immediate_media=True):
            super().__init__()
            self.attn = flamingo_lite.MaskedCrossAttention(dim=dim, dim_head=dim_head, heads=heads,
                                                           only_attend_immediate_media=only_attend_immediate_media)
            self.attn_gate = nn.Parameter(torch.tensor([0.0]))
            self.ff = flamingo_lite.FeedForward(dim, mult=ff_mult)
            self.ff_gate = nn.Parameter(torch.tensor([0.0]))

        def forward(self, x, media, media_locations=None):
            return body(self, x, media, media_locations)

    return Block


def right(self, x, media, loc):
    x = x + self.attn(x, media, loc) * self.attn_gate.tanh()
    return x + self.ff(x) * self.ff_gate.tanh()


BLOCK_MISTAKES = {
    "without tanh": lambda s, x, m, l: (lambda y: y + s.ff(y) * s.ff_gate)(x + s.attn(x, m, l) * s.attn_gate),
    "first residual is missing": lambda s, x, m, l: (lambda y: y + s.ff(y) * s.ff_gate.tanh())(s.attn(x, m, l) * s.attn_gate.tanh()),
    "second residual is missing": lambda s, x, m, l: s.ff(x + s.attn(x, m, l) * s.attn_gate.tanh()) * s.ff_gate.tanh(),
    "feed-forward reads the block's input": lambda s, x, m, l: x + s.attn(x, m, l) * s.attn_gate.tanh() + s.ff(x) * s.ff_gate.tanh(),
    "without media_locations": lambda s, x, m, l: right(s, x, m, None),
    "gates are swapped": lambda s, x, m, l: (lambda y: y + s.ff(y) * s.attn_gate.tanh())(x + s.attn(x, m, l) * s.ff_gate.tanh()),
    "feed-forward is not gated": lambda s, x, m, l: (lambda y: y + s.ff(y))(x + s.attn(x, m, l) * s.attn_gate.tanh()),
    "feed-forward is gated by attn_gate": lambda s, x, m, l: (lambda y: y + s.ff(y) * s.attn_gate.tanh())(
        x + s.attn(x, m, l) * s.attn_gate.tanh()),
    "cross-attention is not gated": lambda s, x, m, l: (lambda y: y + s.ff(y) * s.ff_gate.tanh())(x + s.attn(x, m, l)),
    "feed-forward is left out": lambda s, x, m, l: x + s.attn(x, m, l) * s.attn_gate.tanh(),
    "feed-forward runs before the cross-attention": lambda s, x, m, l: (lambda y: y + s.attn(y, m, l) * s.attn_gate.tanh())(
        x + s.ff(x) * s.ff_gate.tanh()),
    "update alone, without the block's input": lambda s, x, m, l: right(s, x, m, l) - x,
    "gates go through a sigmoid: use tanh": lambda s, x, m, l: (lambda y: y + s.ff(y) * torch.sigmoid(s.ff_gate))(
        x + s.attn(x, m, l) * torch.sigmoid(s.attn_gate)),
    "changed its input x in place \\(an in-place op such as `x \\+= ...`": lambda s, x, m, l: in_place(s, x, m, l),
    "parameters attn.norm.weight, .*attn.to_out.weight get no gradient": lambda s, x, m, l: detached(s, x, m, l),
}


def detached(self, x, media, loc):
    x = x + self.attn(x, media, loc).detach() * self.attn_gate.tanh()  # the right numbers; the attention never trains
    return x + self.ff(x) * self.ff_gate.tanh()


def in_place(self, x, media, loc):
    x += self.attn(x, media, loc) * self.attn_gate.tanh()  # the caller's x changes too
    return x + self.ff(x) * self.ff_gate.tanh()


def test_06_forward_stub_solution_and_mistakes(capsys):
    fails(lesson06.check_forward, block_class(lambda s, x, m, l: stub()), match="not written yet")
    lesson06.check_forward(block_class(right))
    assert capsys.readouterr().out.startswith("OK")
    for message, wrong in BLOCK_MISTAKES.items():
        fails(lesson06.check_forward, block_class(wrong), match=message)


@pytest.mark.parametrize("default", ["dim_head=32", "heads=4", "ff_mult=2"])
def test_06_a_constructor_default_other_than_the_references_is_named(default):
    """The check builds the block with the lesson's sizes, so only the signature shows another default."""
    key, value = default.split("=")
    sizes = {"dim_head": 64, "heads": 8, "ff_mult": 4, key: int(value)}

    class OtherDefault(block_class(right)):
        def __init__(self, *, dim, dim_head=sizes["dim_head"], heads=sizes["heads"], ff_mult=sizes["ff_mult"],
                     only_attend_immediate_media=True):
            super().__init__(dim=dim, dim_head=dim_head, heads=heads, ff_mult=ff_mult,
                             only_attend_immediate_media=only_attend_immediate_media)

    fails(lesson06.check_forward, OtherDefault, match=f"constructor's default {default} is not the reference's")


def test_06_constructor_stub_and_misnamed_gate(capsys):
    class Stubbed(block_class(right)):
        def __init__(self, **kwargs):
            nn.Module.__init__(self)
            stub()

    fails(lesson06.check_forward, Stubbed, match="building your block is not written yet")

    class OneGate(block_class(right)):  # one gate named `gate` instead of the reference's attn_gate
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.gate = self.attn_gate
            del self.attn_gate

    fails(lesson06.check_forward, OneGate, match="not the reference's \\(attn, attn_gate, ff, ff_gate\\): missing attn_gate; not in the reference gate")
    hint("06.init", 2)
    assert capsys.readouterr().out.startswith("Hint (06.init): After super().__init__()")


def test_06_gates_opened_at_start_and_a_fixed_feed_forward_are_named():
    class OpenGate(block_class(right)):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.attn_gate = nn.Parameter(torch.tensor([1.0]))

    fails(lesson06.check_forward, OpenGate, match="attn_gate starts at \\[1.0\\]: create it closed")

    class SmallGate(block_class(right)):
        def __init__(self, **kw):
            super().__init__(**kw)
            self.ff_gate = nn.Parameter(torch.tensor([0.01]))

    fails(lesson06.check_forward, SmallGate, match="ff_gate starts at \\[0.01\\]: create it closed")

    class FixedFour(block_class(right)):
        def __init__(self, *, ff_mult=4, **kwargs):
            super().__init__(ff_mult=4, **kwargs)

    fails(lesson06.check_forward, FixedFour, match="pass ff_mult on to the feed-forward")


def test_06_a_mode_not_passed_on_and_gates_of_shape_0d_are_named():
    class ModeDropped(block_class(right)):  # the cross-attention built in its default mode, whatever the block's
        def __init__(self, *, only_attend_immediate_media=True, **kwargs):
            super().__init__(**kwargs)

    fails(lesson06.check_forward, ModeDropped, match="cross-attention runs in the other mode: pass the block's "
                                                     "only_attend_immediate_media on")

    class ScalarGates(block_class(right)):  # load_state_dict quietly loads the reference's (1,) gates into ()
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.attn_gate, self.ff_gate = nn.Parameter(torch.tensor(0.0)), nn.Parameter(torch.tensor(0.0))

    fails(lesson06.check_forward, ScalarGates, match="attn_gate has shape \\(\\), where \\(1,\\) is expected: create "
                                                     "each gate as nn.Parameter\\(torch.tensor\\(\\[0.0\\]\\)\\)")


def test_06_exercises():
    fails(lesson06.check_tanh_slope, stub, match="not written yet")
    lesson06.check_tanh_slope(lambda a: 1 - a.tanh() ** 2)
    fails(lesson06.check_tanh_slope, lambda a: 1 - a**2, match="1 - alpha")
    lesson06.check_tanh_slope(lambda a: 1 / a.cosh() ** 2)  # the same derivative, written another way
    fails(lesson06.check_tanh_slope, lambda a: 1 - a.double().tanh() ** 2, match=r"returns torch.float64 for torch.float32 alpha")
    fails(lesson06.check_tanh_slope, lambda a: ((a + 1e-2).tanh() - (a - 1e-2).tanh()) / 2e-2,
          match=r"close to the slope but not equal to it .*a difference quotient")
    fails(lesson06.check_tanh_slope, lambda a: 1 - a.tanh_() ** 2, match="changed its input alpha in place.*alpha.tanh_")
    good = block_class(right)
    fails(lesson06.check_params_with_gradient, stub, good, match="not written yet")

    def who(block, inputs):
        block.zero_grad()
        block(*inputs).pow(2).mean().backward()
        return sorted(n for n, p in block.named_parameters() if p.grad is not None and bool((p.grad != 0).any()))

    def who_no_zero(block, inputs):
        block(*inputs).pow(2).mean().backward()
        return sorted(n for n, p in block.named_parameters() if p.grad is not None and bool((p.grad != 0).any()))

    lesson06.check_params_with_gradient(who, good)
    fails(lesson06.check_params_with_gradient, lambda b, i: tuple(who(b, i)), good,
          match=r"params_with_gradient returned a tuple: return a sorted list")
    fails(lesson06.check_params_with_gradient, lambda b, i: sorted(n for n, _ in b.named_parameters()), good, match="every parameter")

    def by_hand(block, inputs, target, sign=1):
        x, m, l = inputs
        with torch.no_grad():
            return sign * (2 * (x - target) / x.numel() * block.attn(x, m, l)).sum()

    fails(lesson06.check_attn_gate_gradient, stub, good, match="not written yet")
    lesson06.check_attn_gate_gradient(by_hand, good)
    fails(lesson06.check_attn_gate_gradient, lambda b, i, t: by_hand(b, i, t, -1), good, match="sign")
    fails(lesson06.check_params_with_gradient, who_no_zero, good,
          match="attn.to_q.weight still have the gradient of the call before: .*block.zero_grad")
    fails(lesson06.check_params_with_gradient, lambda b, i: who(b, i)[::-1], good,
          match="the names are right but not in sorted order \\(\\['ff_gate', 'attn_gate'\\]\\)")
    fails(lesson06.check_params_with_gradient, lambda b, i: who(b, i) + ["ff.1.weight"], good,
          match="with closed gates only the gates get a gradient")

    class Extra(good):  # a parameter the reference does not have: its answer cannot be worked out
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.extra = nn.Parameter(torch.zeros(1))

    fails(lesson06.check_params_with_gradient, who, Extra, match="not the reference's: run lesson06.check_forward")

    def who_then_steps(block, inputs):  # right names, then an optimizer step that moves the weights
        names = who(block, inputs)
        torch.optim.SGD(block.parameters(), lr=0.1).step()
        return names

    fails(lesson06.check_params_with_gradient, who_then_steps, good,
          match=r"changed the block's parameters \(attn_gate, ff_gate\): an optimizer step")
    fails(lesson06.check_params_with_gradient, lambda b, i: sorted({n.split(".")[0] for n in who(b, i)}), good,
          match=r"the top-level parts: return every parameter's full name")
    # a block whose forward detaches the cross-attention: the block is named, not the learner's right function
    fails(lesson06.check_params_with_gradient, who, block_class(detached),
          match="your block gives attn.norm.bias, .* no gradient.*your params_with_gradient is not the problem")


def test_06_a_gate_that_is_no_parameter_is_named_in_every_check():
    def who(block, inputs):
        block.zero_grad()
        block(*inputs).pow(2).mean().backward()
        return sorted(n for n, p in block.named_parameters() if p.grad is not None and bool((p.grad != 0).any()))

    def by_hand(block, inputs, target):
        x, m, l = inputs
        with torch.no_grad():
            return (2 * (x - target) / x.numel() * block.attn(x, m, l)).sum()

    class PlainGate(block_class(right)):  # the gate a plain tensor attribute, as a learner would write it
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            del self.attn_gate
            self.attn_gate = torch.tensor([0.0])

    class FrozenGate(block_class(right)):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.ff_gate = nn.Parameter(torch.tensor([0.0]), requires_grad=False)

    plain = "attn_gate is a plain tensor, not an nn.Parameter, so it is not among the block's parameters and never trains"
    fails(lesson06.check_forward, PlainGate, match=plain)
    fails(lesson06.check_params_with_gradient, who, PlainGate, match=plain)
    fails(lesson06.check_attn_gate_gradient, by_hand, PlainGate, match=plain)
    fails(lesson06.check_forward, FrozenGate, match="ff_gate has requires_grad=False, so it never trains")


def test_06_a_mistake_inside_the_cross_attention_or_the_feed_forward_is_sent_to_its_lesson():
    class NoToOut(flamingo_lite.MaskedCrossAttention):  # to_out left out: with inner == dim it runs
        def forward(self, x, media, media_locations=None):
            to_out, self.to_out = self.to_out, nn.Identity()
            try:
                return super().forward(x, media, media_locations)
            finally:
                self.to_out = to_out

    class OwnAttention(block_class(right)):
        def __init__(self, *, dim, dim_head=64, heads=8, ff_mult=4, only_attend_immediate_media=True):
            super().__init__(dim=dim, dim_head=dim_head, heads=heads, ff_mult=ff_mult,
                             only_attend_immediate_media=only_attend_immediate_media)
            self.attn = NoToOut(dim=dim, dim_head=dim_head, heads=heads,
                                only_attend_immediate_media=only_attend_immediate_media)

    fails(lesson06.check_forward, OwnAttention, match="self.attn \\(your MyMaskedCrossAttention from lesson 05\\).*"
                                                      "lesson05.check_forward")

    class CrossedSizes(block_class(right)):  # heads and dim_head crossed: the same weight shapes, other heads
        def __init__(self, *, dim, dim_head=64, heads=8, ff_mult=4, only_attend_immediate_media=True):
            super().__init__(dim=dim, dim_head=dim_head, heads=heads, ff_mult=ff_mult,
                             only_attend_immediate_media=only_attend_immediate_media)
            self.attn = flamingo_lite.MaskedCrossAttention(dim=dim, dim_head=heads, heads=dim_head,
                                                           only_attend_immediate_media=only_attend_immediate_media)

    fails(lesson06.check_forward, CrossedSizes,
          match=r"splits into 8 heads of width 2, not 2 of width 8: heads and dim_head are crossed")

    class DoubledFeedForward(block_class(right)):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            ff = self.ff
            self.ff = nn.Sequential(*ff)  # the same weights and names, ff.0 ... ff.3
            self.ff.forward = lambda x: 2 * nn.Sequential.forward(self.ff, x)

    fails(lesson06.check_forward, DoubledFeedForward, match="self.ff \\(your MyFeedForward from lesson 03\\).*"
                                                            "lesson03.check_feedforward")


def test_06_exercise_mistakes_are_named():
    for wrong, named in [(lambda a: 1 / a.cosh(), "1 / cosh\\(alpha\\), without the square"),
                         (lambda a: (1 - a.tanh()) ** 2, "\\(1 - tanh\\(alpha\\)\\)\\*\\*2"),
                         (lambda a: 1 - a.tanh() * 2, "`\\* 2` where the square is `\\*\\* 2`"),
                         (lambda a: 1 - (a**2).tanh(), "1 - tanh\\(alpha\\*\\*2\\)"),
                         (lambda a: 1 + a.tanh() ** 2, "1 \\+ tanh\\(alpha\\)\\*\\*2"),
                         (lambda a: a.tanh() ** 2, "tanh\\(alpha\\)\\*\\*2 alone")]:
        fails(lesson06.check_tanh_slope, wrong, match=named)
    good = block_class(right)

    def by_hand(block, inputs, target, *, mean=False, layer="attn", locations=True):
        x, m, l = inputs
        with torch.no_grad():
            dz = block.attn(x, m, l if locations else None) if layer == "attn" else block.ff(x)
            products = 2 * (x - target) / x.numel() * dz
            return products.mean() if mean else products.sum()

    fails(lesson06.check_attn_gate_gradient, lambda b, i, t: by_hand(b, i, t, mean=True), good,
          match="averaged, .mean\\(\\), where the chain rule adds them up")
    fails(lesson06.check_attn_gate_gradient, lambda b, i, t: by_hand(b, i, t, layer="ff"), good,
          match="this is ff_gate's gradient")
    fails(lesson06.check_attn_gate_gradient, lambda b, i, t: by_hand(b, i, t, locations=False), good,
          match="run without media_locations")

    def first_sample_only(block, inputs, target):  # right on the check's sentence, a batch of 1
        x, m, l = inputs
        with torch.no_grad():
            return (2 * (x[0] - target[0]) / x[0].numel() * block.attn(x, m, l)[0]).sum()

    def one_sample_mean(block, inputs, target):  # the size of one sample written in
        x, m, l = inputs
        with torch.no_grad():
            return (2 * (x - target) / (x.shape[1] * x.shape[2]) * block.attn(x, m, l)).sum()

    for wrong in (first_sample_only, one_sample_mean):
        fails(lesson06.check_attn_gate_gradient, wrong, good, match="right on one sentence but not on a batch of 2")

    def subtracted_in_place(block, inputs, target):  # the right number, with the caller's x changed
        x, m, l = inputs
        with torch.no_grad():
            dz = block.attn(x, m, l)
            return (2 * x.sub_(target) / x.numel() * dz).sum()

    def target_changed(block, inputs, target):
        x, m, l = inputs
        with torch.no_grad():
            return (2 * target.neg_().add_(x) / x.numel() * block.attn(x, m, l)).sum()

    fails(lesson06.check_attn_gate_gradient, subtracted_in_place, good, match=r"changed its input x \(inputs\[0\]\) in place.*x - target")
    fails(lesson06.check_attn_gate_gradient, target_changed, good, match=r"changed its input target in place")

    def slope_by_autograd(a):  # the answer asked of autograd, not worked out
        a = a.clone().requires_grad_(True)
        a.tanh().sum().backward()
        return a.grad

    def slope_by_autograd_grad(a):
        a = a.clone().requires_grad_(True)
        return torch.autograd.grad(a.tanh().sum(), a)[0]

    def gate_by_backward(block, inputs, target):
        (block(*inputs) - target).pow(2).mean().backward()
        return block.attn_gate.grad

    for wrong in (slope_by_autograd, slope_by_autograd_grad):
        fails(lesson06.check_tanh_slope, wrong, match="asks autograd .* worked out by hand")
    fails(lesson06.check_attn_gate_gradient, gate_by_backward, good, match="asks autograd .* worked out by hand")
    fails(lesson06.check_attn_gate_gradient, lambda b, i, t: b.attn_gate.grad, good,
          match="returned None \\(block.attn_gate.grad before any backward pass\\?\\)")

    def who_parameters(block, inputs):  # the parameters themselves, not their names
        block.zero_grad()
        block(*inputs).pow(2).mean().backward()
        return [p for _, p in block.named_parameters() if p.grad is not None and bool((p.grad != 0).any())]

    fails(lesson06.check_params_with_gradient, who_parameters, good, match="names \\(strings")


# ---------------------------------------------------------------------------------------------------------- 07

def flamingo_class(*, every_layer=False, shift=False, before=True, resampler=True, locations=True, head=True,
                   freeze_vision=True, freeze_lm=True, freeze_all=False, num_latents=None, xattn_name="xattn",
                   int_keys=False, init_stub=False, forward_stub=False, new_lm=False, resampler_depth=None,
                   extra=False, lm_heads=False, double_residual=False, shared=False, skip_lm_layers=False,
                   media_id=None, pass_immediate=True, double_lm=False, skip_block=None, dim_head_from=None,
                   discard_block=False, lm_alone=False, keys_in_dict=False, eval_too=True, first_picture=False,
                   locations_of_row0=False, no_media_embeds=False, cut=None, plain_dict=False, train_mode="kept"):
    """The lesson's MyFlamingo, with the usual mistakes as switches. dim_head_from: "heads" or "lm_heads", the head
    width computed as `config.dim // config.heads` (or `// config.lm_heads`) instead of `config.dim_head`."""
    from flamingo_lite.tiny.model import freeze

    class MyFlamingo(nn.Module):
        def __init__(self, config, *, lm, vision):
            super().__init__()
            if init_stub:
                stub()
            self.config = config
            self.vision = freeze(vision) if freeze_vision else vision
            self.lm = freeze(lm) if freeze_lm else lm
            if not eval_too:  # requires_grad_(False) alone: still in training mode
                self.vision.train(), self.lm.train()
            if new_lm:
                self.lm = freeze(TinyLM(config.lm_config()))
            heads = config.lm_heads if lm_heads else config.heads
            dim_head = config.dim // getattr(config, dim_head_from) if dim_head_from else config.dim_head
            self.resampler = flamingo_lite.PerceiverResampler(
                dim=config.dim, depth=resampler_depth or config.resampler_depth, dim_head=dim_head, heads=heads,
                num_latents=num_latents or config.num_latents,
                **({} if no_media_embeds else {"num_media_embeds": config.num_media_embeds}),
                ff_mult=config.ff_mult, media_embedding=config.media_embedding)
            depth, every = len(lm.blocks), config.cross_attn_every
            self.xattn_layers = [i for i in range(depth) if every_layer or (i + shift) % every == 0]
            immediate = {"only_attend_immediate_media": config.only_attend_immediate_media} if pass_immediate else {}
            make = lambda: flamingo_lite.GatedCrossAttentionBlock(  # noqa: E731
                dim=config.dim, dim_head=dim_head, heads=heads, ff_mult=config.ff_mult, **immediate)
            one = make()
            blocks = {i if int_keys else str(i): one if shared else make() for i in self.xattn_layers}
            setattr(self, xattn_name, blocks if plain_dict else nn.ModuleDict(blocks))
            if extra:  # flamingo-pytorch's per-picture embedding, which the paper's Flamingo does not have
                self.media_pos_emb = nn.Parameter(torch.zeros(config.num_media_embeds, 1, config.dim))
            if freeze_all:
                self.requires_grad_(False)

        def forward(self, tokens, images):
            if forward_stub:
                stub()
            if lm_alone:
                return self.lm(tokens)  # (b, n, V): the pictures never reach it
            feats = self.vision(images)  # (b, t, g, d)
            if cut == "no_grad":  # the new parts run without gradients: right numbers, nothing trains
                with torch.no_grad():
                    media = self.resampler(feats)  # (b, t, L, d)
            else:
                media = self.resampler(feats) if resampler else feats  # (b, t, L, d)
            media = media.detach() if cut == "detach" else media
            media = media[:, :1].expand_as(media) if first_picture else media  # (b, t, L, d): picture 0 in every slot
            loc = tokens == (self.config.media_token_id if media_id is None else media_id) if locations else None  # (b, n)
            loc = loc[:1].expand_as(loc) if locations_of_row0 else loc  # (b, n): row 0's markers for every row
            x = self.lm.embed(tokens)  # (b, n, d)
            for i, lm_block in enumerate(self.lm.blocks):
                if skip_lm_layers and i not in self.xattn_layers:
                    continue
                if keys_in_dict and i in self.xattn:  # int in a dict keyed by strings: never true
                    x = self.xattn[str(i)](x, media, loc)
                elif discard_block and i in self.xattn_layers:
                    self.xattn[str(i)](x, media, loc)  # the output thrown away
                elif before and i in self.xattn_layers and i != skip_block and not keys_in_dict:
                    x = x + self.xattn[str(i)](x, media, loc) if double_residual else self.xattn[str(i)](x, media, loc)
                x = x + lm_block(x) if double_lm else lm_block(x)  # (b, n, d)
                if not before and i in self.xattn_layers:
                    x = self.xattn[str(i)](x, media, loc)  # (b, n, d)
            return self.lm.head(x) if head else x  # (b, n, V)

        def train(self, mode=True):  # train_mode: "kept" (the frozen parts stay in eval), or a mistake
            if train_mode == "not overridden":
                return super().train(mode)
            if train_mode != "no super":
                super().train(mode)
            self.vision.eval(), self.lm.eval()
            return None if train_mode == "no return" else self

    return MyFlamingo


def test_07_flamingo_class(capsys):
    config = FlamingoConfig()
    lesson08.check_flamingo_class(flamingo_class(), config)
    assert capsys.readouterr().out.startswith("OK")
    fails(lesson08.check_flamingo_class, flamingo_class(init_stub=True), config, match="not written yet")
    fails(lesson08.check_flamingo_class, flamingo_class(train_mode="not overridden"), config,
          match=r"MyFlamingo\.train\(\) puts the vision encoder back in training mode .*override train")
    fails(lesson08.check_flamingo_class, flamingo_class(train_mode="no super"), config,
          match=r"MyFlamingo\.train\(\) leaves self\.resampler in eval mode.*super\(\)\.train\(mode\)")
    fails(lesson08.check_flamingo_class, flamingo_class(train_mode="no return"), config,
          match=r"MyFlamingo\.train\(\) returns NoneType, not the model: end it with `return self`")
    fails(lesson08.check_flamingo_class, flamingo_class(forward_stub=True), config, match="forward.*not written yet")
    fails(lesson08.check_flamingo_class, flamingo_class(before=False), config, match="after the LM layers")
    fails(lesson08.check_flamingo_class, flamingo_class(every_layer=True), config, match="before every LM layer")
    fails(lesson08.check_flamingo_class, flamingo_class(shift=True), config, match="off by one")
    fails(lesson08.check_flamingo_class, flamingo_class(locations=False), config, match="no media_locations.*mask")
    fails(lesson08.check_flamingo_class, flamingo_class(resampler=False), config, match="self.resampler")
    fails(lesson08.check_flamingo_class, flamingo_class(head=False), config, match="lm.head")
    fails(lesson08.check_flamingo_class, flamingo_class(freeze_vision=False), config,
          match=r"gradients reach the vision encoder \(vision\.")
    fails(lesson08.check_flamingo_class, flamingo_class(freeze_lm=False), config,
          match=r"gradients reach the language model \(lm\.")
    fails(lesson08.check_flamingo_class, flamingo_class(freeze_all=True), config, match="resampler and the gated blocks must train")
    fails(lesson08.check_flamingo_class, flamingo_class(eval_too=False), config,
          match=r"leaves the vision encoder in training mode: .*`vision\.requires_grad_\(False\)\.eval\(\)`")

    class VisionNotInEval(flamingo_class()):  # the LM put in eval mode, the vision encoder only frozen
        def __init__(self, config, *, lm, vision):
            super().__init__(config, lm=lm, vision=vision)
            self.vision.training = True

    fails(lesson08.check_flamingo_class, VisionNotInEval, config, match=r"leaves the vision encoder in training mode")

    class FrozenResampler(flamingo_class()):
        def __init__(self, config, *, lm, vision):
            super().__init__(config, lm=lm, vision=vision)
            self.resampler.requires_grad_(False)

    fails(lesson08.check_flamingo_class, FrozenResampler, config, match=r"resampler\.latents gets no gradient")
    fails(lesson08.check_flamingo_class, flamingo_class(xattn_name="blocks"), config,
          match=r"no `self\.xattn` that is a torch\.nn\.ModuleDict")
    fails(lesson08.check_flamingo_class, flamingo_class(int_keys=True), config, match="keys are strings")
    fails(lesson08.check_flamingo_class, flamingo_class(new_lm=True), config, match="use the lm and vision it is given")
    with pytest.raises(TypeError, match="class itself"):
        lesson08.check_flamingo_class(flamingo_class()(config, lm=TinyLM(config.lm_config()),
                                                       vision=VisionEncoder(dim=config.dim)), config)
    with pytest.raises(TypeError, match="FlamingoConfig"):
        lesson08.check_flamingo_class(flamingo_class(), {"dim": 64})


def test_07_flamingo_class_second_config_and_forward_mistakes():
    """A second config (block heads != lm_heads, another <image> id, all previous media) names what the first
    config cannot see; a residual added twice, a shared block and skipped LM layers are named too."""
    config = FlamingoConfig()
    other = lesson08.other_config(config)
    assert other.heads != other.lm_heads and other.media_token_id != config.media_token_id
    assert not other.only_attend_immediate_media
    fails(lesson08.check_flamingo_class, flamingo_class(lm_heads=True), config,
          match=r"the gated blocks and the resampler|the resampler and the gated blocks")
    fails(lesson08.check_flamingo_class, flamingo_class(lm_heads=True), config, match=r"`config\.lm_heads` \(4\).*`config\.heads` \(2\)")
    fails(lesson08.check_flamingo_class, flamingo_class(media_id=1), config,
          match=r"id 1, fixed in your code.*`<image>` is id 2.*self\.config\.media_token_id")
    fails(lesson08.check_flamingo_class, flamingo_class(pass_immediate=False), config,
          match=r"only_attend_immediate_media=False: pass `only_attend_immediate_media=config")
    fails(lesson08.check_flamingo_class, flamingo_class(double_residual=True), config,
          match=r"added to x once more.*already adds its own residual")
    fails(lesson08.check_flamingo_class, flamingo_class(double_lm=True), config, match=r"LM layer's output is added to x once more")
    fails(lesson08.check_flamingo_class, flamingo_class(shared=True), config, match="one gated block object sits before several layers")
    for layer in (0, 2):
        fails(lesson08.check_flamingo_class, flamingo_class(skip_block=layer), config,
              match=rf"the gated block before LM layer {layer} never runs")
    fails(lesson08.check_flamingo_class, flamingo_class(first_picture=True), config,
          match=r"every word reads the sequence's first picture")
    fails(lesson08.check_flamingo_class, flamingo_class(locations_of_row0=True), config,
          match=r"every sequence got the markers of the first one")
    fails(lesson08.check_flamingo_class, flamingo_class(skip_lm_layers=True), config,
          match=r"runs only the LM layers that have a block before them \(\[0, 2\]\)")


def test_07_flamingo_class_tells_the_lm_heads_from_a_head_width_computed_from_dim():
    """The second config's dim_head is such that the inner widths of the right blocks, of the LM's heads and of
    `dim // heads` or `dim // lm_heads` as the head width all differ."""
    config = FlamingoConfig()
    other = lesson08.other_config(config)
    widths = {other.heads * other.dim_head, other.lm_heads * other.dim_head, other.dim,
              other.heads * (other.dim // other.lm_heads)}
    assert len(widths) == 4
    fails(lesson08.check_flamingo_class, flamingo_class(dim_head_from="heads"), config,
          match=rf"have dim_head = config\.dim // config\.heads \({other.dim // other.heads}\).*`config\.dim_head` "
                rf"\({other.dim_head}\)")
    fails(lesson08.check_flamingo_class, flamingo_class(dim_head_from="lm_heads"), config,
          match=r"have the language model's head width, config\.dim // config\.lm_heads \(16\)")
    with pytest.raises(ExerciseFailed) as failed:
        lesson08.check_flamingo_class(flamingo_class(lm_heads=True), config)
    assert "number of heads, `config.lm_heads`" in str(failed.value) and "dim_head" not in str(failed.value)


def test_07_flamingo_class_names_a_forward_whose_logits_are_the_lms():
    config = FlamingoConfig()
    fails(lesson08.check_flamingo_class, flamingo_class(discard_block=True), config,
          match=r"gated blocks run, but their output is thrown away.*assign it, `x = self\.xattn\[str\(i\)\]")
    fails(lesson08.check_flamingo_class, flamingo_class(lm_alone=True), config,
          match=r"returns the language model's own logits \(`self\.lm\(tokens\)`\)")
    fails(lesson08.check_flamingo_class, flamingo_class(keys_in_dict=True), config,
          match=r"no gated block runs.*`i in self\.xattn` is never true")


def test_07_flamingo_class_keeps_the_global_random_numbers():
    """The check seeds and builds in a forked RNG: after it the global RNG is where it was before."""
    config = FlamingoConfig()
    torch.manual_seed(7)
    lesson08.check_flamingo_class(flamingo_class(), config)
    after_check = torch.rand(3)
    torch.manual_seed(7)
    assert torch.equal(after_check, torch.rand(3))


def test_07_flamingo_class_names_missing_unexpected_and_misshaped_parameters():
    config = FlamingoConfig()
    fails(lesson08.check_flamingo_class, flamingo_class(resampler_depth=1), config,
          match=r"missing from yours: resampler\.layers\.1\.")
    fails(lesson08.check_flamingo_class, flamingo_class(extra=True), config,
          match=r"in yours but not in flamingo_lite's: media_pos_emb")
    fails(lesson08.check_flamingo_class, flamingo_class(num_latents=4), config,
          match=r"shapes differ: resampler\.latents is \(4, 64\) in yours, \(8, 64\) in flamingo_lite's")


def test_07_example_batch_has_text_before_pictures_and_several_pictures():
    tokens, images = lesson08.example_batch()
    assert tokens.shape[0] > 1 and images.shape[1] > 1
    assert (tokens[1:, 0] != FlamingoConfig().media_token_id).all()  # text before the first picture
    assert ((tokens == FlamingoConfig().media_token_id).sum(1) >= 2).all()  # several pictures in every sequence


def test_07_exercises():
    fails(lesson08.check_placement, stub, match="not written yet")
    assert lesson08.check_placement(lambda d, e: [i for i in range(d) if i % e == 0]) == 12
    fails(lesson08.check_placement, lambda d, e: [i for i in range(d) if (i + 1) % e == 0], match="off by one")
    fails(lesson08.check_placement, lambda d, e: [i for i in range(1, d) if i % e == 0], match="layer 0 is missing")
    for not_a_list in (lambda d, e: range(0, d, e), lambda d, e: (i for i in range(0, d, e))):
        with pytest.raises(ExerciseFailed, match=r"gives the right layers \[0, 1, 2, 3\], but not as a list: return a "
                                                 r"list \(list\(\.\.\.\)\)") as caught:
            lesson08.check_placement(not_a_list)
        assert "off by one" not in str(caught.value)
    fails(lesson08.check_placement, lambda d, e: [float(i) for i in range(0, d, e)],
          match=r"gives the right layers, but as float values: layer indices are ints")
    fails(lesson08.check_trainable, lambda m: tuple(sorted({n.split(".")[0] for n, p in m.named_parameters()
                                                            if p.requires_grad})),
          FlamingoConfig(), TinyLM, VisionEncoder, match=r"right names, but in a tuple: return a sorted list")
    fails(lesson08.check_placement, lambda d, e: tuple(range(0, d, e)),
          match=r"gives the right layers \[0, 1, 2, 3\], but as a tuple: return a list")
    config = FlamingoConfig()
    fails(lesson08.check_trainable, stub, config, TinyLM, VisionEncoder, match="not written yet")
    fails(lesson08.check_trainable, lambda m: {n.split(".")[0] for n, p in m.named_parameters() if p.requires_grad},
          config, TinyLM, VisionEncoder, match=r"right names, but in a set, which has no order: return a sorted list")
    lesson08.check_trainable(lambda m: sorted({n.split(".")[0] for n, p in m.named_parameters() if p.requires_grad}),
                             config, TinyLM, VisionEncoder)
    fails(lesson08.check_trainable, lambda m: sorted({n.split(".")[0] for n, p in m.named_parameters()}),
          config, TinyLM, VisionEncoder, match="frozen parts")

    def every_parameter(m):  # a part counts only when all its parameters train
        parts = dict.fromkeys(n.split(".")[0] for n, _ in m.named_parameters())
        return sorted(part for part in parts if all(p.requires_grad for n, p in m.named_parameters()
                                                    if n.split(".")[0] == part))

    fails(lesson08.check_trainable, every_parameter, config, TinyLM, VisionEncoder,
          match=r"leaves out `blocks` of a TinyLM whose first block is frozen.*\(`any`, not `all`\)")
    # the parts in the order they come, not sorted
    fails(lesson08.check_trainable,
          lambda m: list(dict.fromkeys(n.split(".")[0] for n, p in m.named_parameters() if p.requires_grad)),
          config, TinyLM, VisionEncoder, match=r"right names in another order.*sort them, `return sorted\(\.\.\.\)`")
    tokens = flamingo_lite.tiny.data.make_dataset(2, seed=0)
    fails(lesson08.check_no_gate, stub, tokens.tokens, tokens.images, match="not written yet")

    def differs(cfg, t, i):
        model = Flamingo(cfg)
        with torch.no_grad():
            return not torch.equal(model(t, i), model.lm(t))

    def differs_tensor(cfg, t, i):  # the natural answer that returns a tensor is accepted (no `is False` trap)
        model = Flamingo(cfg)
        with torch.no_grad():
            return (model(t, i) != model.lm(t)).any()

    lesson08.check_no_gate(differs, tokens.tokens, tokens.images)
    lesson08.check_no_gate(differs_tensor, tokens.tokens, tokens.images)
    fails(lesson08.check_no_gate, lambda c, t, i: differs(FlamingoConfig(), t, i), tokens.tokens, tokens.images, match="given config")
    fails(lesson08.check_no_gate, lambda c, t, i: not differs(c, t, i), tokens.tokens, tokens.images, match="opposite question")


def test_07_no_gate_names_a_tolerance_a_self_comparison_and_another_lm():
    data = flamingo_lite.tiny.data.make_dataset(2, seed=0)

    def differs(cfg, t, i, *, compare=lambda a, b: not torch.equal(a, b), against="lm"):
        model = Flamingo(cfg)
        with torch.no_grad():
            other = {"lm": lambda: model.lm(t), "itself": lambda: model(t, i),
                     "fresh": lambda: TinyLM(cfg.lm_config())(t)}[against]()
            return compare(model(t, i), other)

    fails(lesson08.check_no_gate, lambda c, t, i: differs(c, t, i, compare=lambda a, b: not torch.allclose(a, b)),
          data.tokens, data.images, match=r"compares with a tolerance \(torch\.allclose.*use `torch\.equal`")
    fails(lesson08.check_no_gate, lambda c, t, i: differs(c, t, i, compare=lambda a, b: bool((a - b).abs().max() > 1e-4)),
          data.tokens, data.images, match="compares with a tolerance")
    fails(lesson08.check_no_gate, lambda c, t, i: differs(c, t, i, against="itself"), data.tokens, data.images,
          match=r"never runs the language model on its own, so it compares the model with itself")
    fails(lesson08.check_no_gate, lambda c, t, i: differs(c, t, i, against="fresh"), data.tokens, data.images,
          match="another language model than the model's own")
    fails(lesson08.check_no_gate, lambda c, t, i: differs(c, t, i, compare=lambda a, b: (a != b).all()),
          data.tokens, data.images,
          match=r"differ from the LM's at one value only.*`\(a != b\)\.all\(\)` asks whether every")

    fails(lesson08.check_no_gate, lambda c, t, i: differs(c, t, i, compare=lambda a, b: not torch.equal(a[0], b[0])),
          data.tokens, data.images,
          match=r"compares part of the logits only: it sees one value raised by 1 at the first sequence's first position but not at the last")
    fails(lesson08.check_no_gate, lambda c, t, i: differs(c, t, i, compare=lambda a, b: not torch.equal(a[:, -1], b[:, -1])),
          data.tokens, data.images,
          match=r"compares part of the logits only: it sees one value raised by 1 at the last sequence's last position but not at the first")
    fails(lesson08.check_no_gate, lambda c, t, i: differs(c, t, i, compare=lambda a, b: (a - b).abs().max()),
          data.tokens, data.images, match=r"returned a torch.float32 tensor \(a difference, such as the largest one\?\)")

    def from_gates(cfg, t, i):  # the gates read instead of the logits
        return any(g != 0 for g in Flamingo(cfg).gates()["attn"])

    fails(lesson08.check_no_gate, from_gates, data.tokens, data.images,
          match=r"answers without running the model \(from its gates, such as `model\.gates\(\)`")
    fails(lesson08.check_no_gate, lambda c, t, i: not c.tanh_gate, data.tokens, data.images,
          match=r"answers without running the model")

    def by_forward(cfg, t, i):  # `model.forward(...)` instead of `model(...)` is as right
        model = Flamingo(cfg)
        with torch.no_grad():
            return not torch.equal(model.forward(t, i), model.lm(t))

    lesson08.check_no_gate(by_forward, data.tokens, data.images)
    # an exact comparison with rtol=atol=0 is torch.equal in other words: it passes
    lesson08.check_no_gate(lambda c, t, i: differs(c, t, i, compare=lambda a, b: not torch.allclose(a, b, rtol=0, atol=0)),
                           data.tokens, data.images)
    # the check runs in a forked RNG: the global RNG is where it was before, whatever the learner's code drew
    torch.manual_seed(11)
    lesson08.check_no_gate(differs, data.tokens, data.images)
    after_check = torch.rand(3)
    torch.manual_seed(11)
    assert torch.equal(after_check, torch.rand(3))


# ---------------------------------------------------------------------------------------------------------- 08

def loss_08(logits, tokens, pad_id=0):
    return F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), tokens[:, 1:].reshape(-1), ignore_index=pad_id)


def test_08_loss():
    fails(lesson09.check_loss, stub, match="not written yet")
    lesson09.check_loss(loss_08)
    flat = lambda lg, tk, **kw: F.cross_entropy(lg.reshape(-1, lg.shape[-1]), tk.reshape(-1), **kw)  # noqa: E731
    fails(lesson09.check_loss, lambda lg, tk, p=0: flat(lg, tk, ignore_index=p), match="its own token")
    fails(lesson09.check_loss, lambda lg, tk, p=0: flat(lg[:, :-1], tk[:, 1:]), match="padding")
    fails(lesson09.check_loss, lambda lg, tk, p=0: flat(lg[:, 1:], tk[:, :-1], ignore_index=p), match="wrong way")
    fails(lesson09.check_loss, lambda lg, tk, p=0: loss_08(lg.detach(), tk, p), match="a loss with no gradient")

    def pads_in_place(lg, tk, p=0):
        tk[tk == p] = -100  # the caller's tokens change
        return F.cross_entropy(lg[:, :-1].reshape(-1, lg.shape[-1]), tk[:, 1:].reshape(-1))

    fails(lesson09.check_loss, pads_in_place, match="changed its input tokens in place.*ignore_index=pad_id")
    # a fixed pad id passes with pad_id 0 and is named with pad_id 2
    fails(lesson09.check_loss, lambda lg, tk, p=0: flat(lg[:, :-1], tk[:, 1:], ignore_index=0),
          match=r"leaves out the targets with id 0, not those with id pad_id \(2 here\)")
    fails(lesson09.check_loss, lambda lg, tk, p=0: flat(lg[:, :-1], tk[:, 1:], ignore_index=0) if p == 0 else flat(lg[:, :-1], tk[:, 1:]),
          match=r"counts the padding targets \(id 2 here\)")
    logits, tokens = lesson09.example_batch(pad_id=2)
    assert (tokens[:, 1:] == 0).any() and (tokens == 2).any() and not (tokens[0] == 2).any()


def test_08_loss_a_mean_over_every_position_and_logits_not_flattened_are_named():
    def masked_mean(lg, tk, p=0):  # the padding's losses zeroed, then averaged over every position
        per_token = F.cross_entropy(lg[:, :-1].reshape(-1, lg.shape[-1]), tk[:, 1:].reshape(-1), ignore_index=p,
                                    reduction="none")
        return per_token.mean()

    def by_mask(lg, tk, p=0):  # the same mistake written with a mask
        per_token = F.cross_entropy(lg[:, :-1].transpose(1, 2), tk[:, 1:], reduction="none")  # (b, n-1)
        return (per_token * (tk[:, 1:] != p)).mean()

    for loss in (masked_mean, by_mask):
        fails(lesson09.check_loss, loss,
              match=r"left out of the sum but not of the count: the mean is over every position")
    def per_sequence(lg, tk, p=0):  # each row's mean, then the mean of the rows
        losses = [F.cross_entropy(lg[i, :-1], tk[i, 1:], ignore_index=p) for i in range(tk.shape[0])]
        return torch.stack(losses).mean()

    fails(lesson09.check_loss, per_sequence, match=r"a mean of each sequence's mean: a short sequence's tokens")

    def mask_from_inputs(lg, tk, p=0):  # the padding mask read one place early, from the inputs
        per_token = F.cross_entropy(lg[:, :-1].transpose(1, 2), tk[:, 1:], reduction="none")  # (b, n-1)
        real = (tk[:, :-1] != p).float()
        return (per_token * real).sum() / real.sum()

    fails(lesson09.check_loss, mask_from_inputs, match=r"padding mask is taken from the inputs \(`tokens\[:, :-1\]`\)")

    def by_hand(lg, tk, p=0, dim=-1):  # -log_softmax gathered at the targets, averaged over the real ones
        log_p = F.log_softmax(lg[:, :-1], dim=dim)  # (b, n-1, V)
        picked = -log_p.gather(-1, tk[:, 1:, None]).squeeze(-1)  # (b, n-1)
        real = (tk[:, 1:] != p).float()
        return (picked * real).sum() / real.sum()

    lesson09.check_loss(by_hand)  # over the vocabulary it is the loss
    flat_loss = lambda lg, tk, p=0: F.cross_entropy(lg[:, :-1].reshape(-1, lg.shape[-1]), tk[:, 1:].reshape(-1),  # noqa: E731
                                                    ignore_index=p)
    fails(lesson09.check_loss, lambda lg, tk, p=0: -flat_loss(lg, tk, p), match=r"the loss has the wrong sign")
    fails(lesson09.check_loss, lambda lg, tk, p=0: F.nll_loss(lg[:, :-1].reshape(-1, lg.shape[-1]), tk[:, 1:].reshape(-1),
                                                               ignore_index=p),
          match=r"the logits are read as log-probabilities")
    fails(lesson09.check_loss, lambda lg, tk, p=0: flat_loss(lg[:1], tk[:1], p), match=r"only the first sequence is scored")
    fails(lesson09.check_loss, lambda lg, tk, p=0: by_hand(lg, tk, p, dim=1),
          match=r"normalised over the positions \(dim=1\), not over the vocabulary.*dim=-1")
    fails(lesson09.check_loss, lambda lg, tk, p=0: by_hand(lg, tk, p, dim=0),
          match=r"normalised over the batch \(dim=0\), not over the vocabulary")

    def off_by_a_bit(lg, tk, p=0):  # matches no usual mistake: the verdict gives both numbers, no index of a scalar
        return F.cross_entropy(lg[:, :-1].reshape(-1, lg.shape[-1]), tk[:, 1:].reshape(-1), ignore_index=p) + 0.1

    fails(lesson09.check_loss, off_by_a_bit, match=r"gives \d+\.\d+, the answer is \d+\.\d+; no usual mistake matches")
    fails(lesson09.check_loss, lambda lg, tk, p=0: F.cross_entropy(lg[:, :-1], tk[:, 1:], ignore_index=p),
          match=r"raised RuntimeError: Expected target size.*not flattened.*reshape\(-1, V\)")


def freeze_08(model):
    model.vision.requires_grad_(False)
    model.lm.requires_grad_(False)
    return model


def groups_08(model, *, lr, gate_lr, weight_decay, gate_decay=0.0, frozen=False, gate_rate=True):
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad or frozen]
    gates = [p for n, p in named if n.endswith("_gate")]
    others = [p for n, p in named if not n.endswith("_gate")]
    return [{"params": others, "weight_decay": weight_decay},
            {"params": gates, "lr": gate_lr if gate_rate else lr, "weight_decay": gate_decay}]


def test_08_freeze_and_groups():
    fails(lesson09.check_freeze, stub, match="not written yet")
    lesson09.check_freeze(freeze_08)
    fails(lesson09.check_freeze, lambda m: m, match=r"left trainable \(vision, lm still have requires_grad=True\)")
    fails(lesson09.check_freeze, lambda m: (m.lm.requires_grad_(False), m)[1],
          match=r"\(vision still has requires_grad")
    fails(lesson09.check_freeze, lambda m: m.requires_grad_(False), match="resampler and xattn were frozen too")

    def plain_attribute(m):  # `requires_grad = False` on the module: a new attribute, nothing frozen
        m.vision.requires_grad = False
        m.lm.requires_grad = False
        return m

    fails(lesson09.check_freeze, plain_attribute, match=r"`model\.vision\.requires_grad = False` sets a plain attribute")
    fails(lesson09.check_freeze, lambda m: (freeze_08(m), m.xattn.requires_grad_(False), m)[2],
          match="xattn was frozen too")
    fails(lesson09.check_groups, stub, match="not written yet")
    lesson09.check_groups(groups_08)
    fails(lesson09.check_groups, lambda m, **kw: groups_08(m, **kw, gate_decay=kw["weight_decay"]), match="gates get weight decay")
    fails(lesson09.check_groups, lambda m, **kw: groups_08(m, **kw, frozen=True), match="frozen parameters")
    fails(lesson09.check_groups, lambda m, **kw: groups_08(m, **kw, gate_rate=False), match="gate_lr")
    fails(lesson09.check_groups, lambda m, **kw: [{"params": [p for p in m.parameters() if p.requires_grad]}],
          match="weight decay")
    fails(lesson09.check_groups, lambda m, **kw: [dict(g, params=[n for n, p in m.named_parameters()
                                                                  if any(p is q for q in g["params"])])
                                                   for g in groups_08(m, **kw)],
          match=r"'params' holds str values, not the parameters themselves")
    fails(lesson09.check_groups, lambda m, **kw: [dict(g, params=iter(g["params"])) for g in groups_08(m, **kw)],
          match="'params' is a list_iterator, not a list")
    # the package's own groups (what train_flamingo uses) pass the same check
    lesson09.check_groups(flamingo_lite.tiny.training.parameter_groups)


def greedy_08(model, prompt, images, *, eoc_id, max_new_tokens=5, stop=True, feed=True, position=-1, sample=False,
              pictures="all", window=None):
    ids, new = prompt.clone(), []
    given = images[None] if pictures == "all" else images[None, :1] if pictures == "first" else images  # (1, t, 3, H, W)
    for _ in range(max_new_tokens):
        context = ids if window is None else ids[-window:]  # a window of the latest ids: a mistake
        logits = model(context[None], given)[0, position]  # (V,)
        nid = int(torch.multinomial(logits.softmax(-1), 1)) if sample else int(logits.argmax())
        new.append(nid)
        if feed:
            ids = torch.cat([ids, torch.tensor([nid])])
        if stop and nid == eoc_id:
            break
    return new


def test_08_greedy():
    fails(lesson09.check_greedy, stub, match="not written yet")
    fails(lesson09.check_greedy, lambda *a, **k: [torch.tensor(i) for i in greedy_08(*a, **k)],
          match=r"returned a list of tensors, not of token ids: append `int\(next_id\)`")
    lesson09.check_greedy(greedy_08)
    fails(lesson09.check_greedy, lambda *a, **k: greedy_08(*a, **k, stop=False), match="does not stop at <eoc>")
    fails(lesson09.check_greedy, lambda *a, **k: greedy_08(*a, **k, feed=False), match="repeats")
    fails(lesson09.check_greedy, lambda *a, **k: greedy_08(*a, **k, position=0), match="wrong position")
    fails(lesson09.check_greedy, lambda *a, **k: greedy_08(*a, **k, feed=False),
          match="repeats its first word: the model gets the same input at every step; append")

    def prompt_end(model, prompt, images, **kw):  # appends, but reads the prompt's last position every step
        return greedy_08(model, prompt, images, **kw, position=len(prompt) - 1)

    fails(lesson09.check_greedy, prompt_end,
          match=r"repeats its first word though the input grows: it reads the same position.*`logits\[0, -1\]`")
    # a window of the latest ids drops the <image> the prompt starts with (on the two-picture prompt of 7 ids)
    fails(lesson09.check_greedy, lambda *a, **k: greedy_08(*a, **k, window=4),
          match=r"at decoding step 0, greedy_decode gave the model 4 tokens that do not begin with the prompt: it "
                r"feeds a window.*`<image>`")

    def new_ids_only(model, prompt, images, *, eoc_id, max_new_tokens=5):  # the prompt once, then only the last id
        ids, new = prompt, []
        for _ in range(max_new_tokens):
            nid = int(model(ids[None], images[None])[0, -1].argmax())
            new.append(nid)
            ids = torch.tensor([nid])
            if nid == eoc_id:
                break
        return new

    fails(lesson09.check_greedy, new_ids_only, match=r"at decoding step 1, greedy_decode gave the model 1 tokens")

    def eoc_anywhere(model, prompt, images, *, eoc_id, max_new_tokens=5):  # stops at the prompt's own <eoc>
        ids, new = prompt, []
        for _ in range(max_new_tokens):
            nid = int(model(ids[None], images[None])[0, -1].argmax())
            new.append(nid)
            ids = torch.cat([ids, torch.tensor([nid])])
            if eoc_id in ids.tolist():
                break
        return new

    fails(lesson09.check_greedy, eoc_anywhere, match=r"holds an <eoc> of its own.*not at one anywhere in the ids")

    def prompt_in_place(model, prompt, images, *, eoc_id, max_new_tokens=5):
        prompt[0] = prompt[0]  # a no-op write stays: only values that change count
        new = greedy_08(model, prompt, images, eoc_id=eoc_id, max_new_tokens=max_new_tokens)
        prompt[-1] = new[0]  # the caller's prompt overwritten
        return new

    fails(lesson09.check_greedy, prompt_in_place, match=r"changed the prompt it was given in place")
    fails(lesson09.check_greedy, lambda *a, max_new_tokens, **k: greedy_08(*a, max_new_tokens=max_new_tokens - 1, **k),
          match=r"stops early: 2 tokens \('blue square'\) where max_new_tokens=3 allows 3")
    for pictures, shape in (("first", r"\(1, 1, 3, 16, 16\)"), ("no batch axis", r"\(2, 3, 16, 16\)")):  # right with one picture
        fails(lesson09.check_greedy, lambda *a, **k: greedy_08(*a, **k, pictures=pictures),
              match=f"raised ValueError: the model got images of shape {shape}, not \\(1, t, 3, H, W\\) = \\(1, 2, 3, 16, 16\\)")


def test_08_greedy_that_samples_is_named_and_the_global_random_numbers_stay():
    torch.manual_seed(0)
    before = torch.rand(3)
    torch.manual_seed(0)
    torch.rand(3)
    fails(lesson09.check_greedy, lambda *a, **k: greedy_08(*a, **k, sample=True),
          match=r"another answer each run.*`torch.multinomial` samples.*argmax")
    lesson09.check_greedy(greedy_08)
    after = torch.rand(3)
    torch.manual_seed(0)
    torch.rand(3)
    assert torch.equal(after, torch.rand(3)) and not torch.equal(before, after)


def test_08_exercises():
    def first(history, layer, threshold, use_abs=True):
        for step, gates in zip(history["step"], history["attn_gate_tanh"]):
            if (abs(gates[layer]) if use_abs else gates[layer]) > threshold:
                return step
        return None

    fails(lesson09.check_first_step_above, stub, match="not written yet")
    lesson09.check_first_step_above(first)
    fails(lesson09.check_first_step_above, lambda h, l, t: first(h, l, t, use_abs=False), match="negative")
    fails(lesson09.check_first_step_above, lambda h, l, t: first({**h, "attn_gate_tanh": h["ff_gate_tanh"]}, l, t),
          match=r"raised KeyError: 'ff_gate_tanh'; the exercise asks when the attention gate opens")

    def first_at_or_above(history, layer, threshold):
        return next((s for s, g in zip(history["step"], history["attn_gate_tanh"]) if abs(g[layer]) >= threshold), None)

    fails(lesson09.check_first_step_above, first_at_or_above, match=r"exactly 0\.04: that does not exceed.*not `>=`")
    fails(lesson09.check_first_step_above, lambda h, l, t: first_at_or_above(h, l, t) if l == 1 else first(h, l, t),
          match=r"returned step 20, where \|tanh\(attn_gate\)\| is exactly 0\.3")  # a negative gate at -0.3

    def tanh_again(history, layer, threshold):  # the logged values are tanh(attn_gate) already
        return next((s for s, g in zip(history["step"], history["attn_gate_tanh"]) if abs(math.tanh(g[layer])) > threshold),
                    None)

    def sorts_the_history(history, layer, threshold):  # right answers, and the caller's history reordered
        history["attn_gate_tanh"].sort(key=lambda g: abs(g[layer]), reverse=True)
        return first(history, layer, threshold)

    fails(lesson09.check_first_step_above, sorts_the_history,
          match=r"changed the history it was given \(sorted, or edited, a list in place\)")
    fails(lesson09.check_first_step_above, tanh_again,
          match=r"returned None, where \|tanh\(attn_gate\)\| first exceeds 0.295 at step 20: .*without another tanh")

    def from_index(history, layer, threshold, every=10):  # the step worked out from the entry's index
        for index, gates in enumerate(history["attn_gate_tanh"]):
            if abs(gates[layer]) > threshold:
                return index * every
        return None

    fails(lesson09.check_first_step_above, from_index,
          match=r"returned 30, the entry's index 3 times the logging interval 10, but that entry is step 25")
    from flamingo_lite.tiny import data as shapes_data

    def fmt(caption):
        w = caption.split()
        if len(w) == 3 and w[0] == "a" and w[1] in shapes_data.COLOURS and w[2] in shapes_data.SHAPES:
            return "colour_first"
        if len(w) == 4 and w[0] == "a" and w[1] in shapes_data.SHAPES and w[2] == "in" and w[3] in shapes_data.COLOURS:
            return "shape_first"
        return None

    fails(lesson09.check_caption_format, stub, match="not written yet")
    lesson09.check_caption_format(fmt)
    fails(lesson09.check_caption_format, lambda c: "colour_first" if len(c.split()) == 3 else "shape_first", match="should be")

    def fmt_without_in(caption):
        w = caption.split()
        if len(w) == 4 and w[0] == "a" and w[1] in shapes_data.SHAPES and w[3] in shapes_data.COLOURS:
            return "shape_first"
        return fmt(caption)

    fails(lesson09.check_caption_format, fmt_without_in,
          match=r"caption_format\('a circle on red'\) should be None, yours is 'shape_first'.*third word is 'in'")

    def colour_only(caption):  # a three-word caption judged by its colour alone
        w = caption.split()
        return "colour_first" if len(w) == 3 and w[0] == "a" and w[1] in shapes_data.COLOURS else fmt(caption)

    fails(lesson09.check_caption_format, colour_only,
          match=r"caption_format\('a red red'\) should be None, yours is 'colour_first'.*third word is a shape too")


def loop_09(model, data, *, steps, batch_size, lr, gate_lr, weight_decay, log_every, seed, zero_grad=True, freeze=True,
            gate_decay=False, shift=True, step_opt=True, first_log=True, keys=True, one_group=False, cosine=True,
            log_index=False, index_condition=False, log_early=False, locations=False, eval_at_end=True,
            zero_grad_late=None, decay_off=False, loss_after=False, order_every_step=False, train_mode=True,
            keep_partial=False, schedule_first=False, gate_log="tanh", loss_tensors=False, blocks_by_index=False,
            log_last=True, extra_loss=False, optimizer_class=None, first_after=False, cosine_over=None, clip=None,
            lambda_ahead=False):
    """The training loop of lesson 09, written as a learner would, with switches for the usual mistakes.
    zero_grad_late: "none" or "zeros", `optimizer.zero_grad(set_to_none=...)` called after `loss.backward()`."""
    import math

    if freeze:
        freeze_08(model)
    if train_mode:
        model.train()
    groups = groups_08(model, lr=lr, gate_lr=gate_lr, weight_decay=0.0 if decay_off else weight_decay,
                       gate_decay=weight_decay if gate_decay else 0.0, frozen=not freeze)
    groups = [g for g in groups if g["params"]]
    if one_group:
        groups = [{"params": [p for g in groups for p in g["params"]], "weight_decay": weight_decay}]
    optimizer = (optimizer_class or torch.optim.AdamW)(groups, lr=lr)
    span = cosine_over or steps  # steps - 1: a mistake
    ahead = 1 if lambda_ahead else 0  # the lambda reading step s + 1: a mistake
    rate = (lambda s: 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min((s + ahead) / span, 1.0)))) if cosine else (lambda s: 1.0)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, rate)
    generator = torch.Generator().manual_seed(seed)
    history = {"step": [], "loss": [], "attn_gate_tanh": [], "ff_gate_tanh": [], "loss_every_step": []}
    if not keys:
        del history["ff_gate_tanh"]

    def log(step, loss):
        ids = range(len(model.xattn_layers)) if blocks_by_index else model.xattn_layers  # 0, 1, ...: a mistake
        blocks = [model.xattn[str(i)] for i in ids]
        history["step"].append(step)
        history["loss"].append(loss)
        read = {"raw": lambda g: float(g.detach()), "abs": lambda g: abs(float(g.detach().tanh())),
                "tanh twice": lambda g: math.tanh(float(g.detach().tanh()))}.get(
            gate_log, lambda g: float(g.detach().tanh()))
        attn, ff = [read(b.attn_gate) for b in blocks], [read(b.ff_gate) for b in blocks]
        if gate_log == "swapped":
            attn, ff = ff, attn
        if gate_log == "attn twice":
            ff = attn
        history["attn_gate_tanh"].append(attn)
        if keys:
            history["ff_gate_tanh"].append(ff)

    queue = []
    for step in range(steps):
        if order_every_step:  # a new order at every step: a mistake
            idx = torch.randperm(len(data), generator=generator)[:batch_size]
        else:
            if not queue:
                order = torch.randperm(len(data), generator=generator)  # (N,)
                whole = len(data) if keep_partial else len(data) - len(data) % batch_size  # all kept: a mistake
                queue = list(order[:whole].split(batch_size))
            idx = queue.pop(0)
        part = data[idx]
        if locations:  # flamingo_lite's Flamingo takes them, the learner's MyFlamingo does not
            logits = model(part.tokens, part.images, part.media_locations)  # (B, n, V)
        else:
            logits = model(part.tokens, part.images)  # (B, n, V)
        loss = loss_08(logits, part.tokens) if shift else F.cross_entropy(logits.flatten(0, 1), part.tokens.flatten())
        if step == 0 and first_log and not first_after:
            log(0, loss.item())
        count = step if index_condition else step + 1  # the condition tested on the 0-based index: a mistake
        logged = count % log_every == 0 or (log_last and step + 1 == steps)  # log_last=False: a mistake
        if logged and log_early:  # before the update: a mistake
            log(step + 1, loss.item())
        if zero_grad and not zero_grad_late:
            optimizer.zero_grad()
        loss.backward()
        if zero_grad_late:
            optimizer.zero_grad(set_to_none=zero_grad_late == "none")
        if clip is not None:  # gradient clipping, which train_flamingo does not do: a mistake
            nn.utils.clip_grad_norm_([p for g in groups for p in g["params"]], clip)
        if schedule_first:  # the schedule before the update: a mistake
            schedule.step()
        if step_opt:
            optimizer.step()
        if not schedule_first:
            schedule.step()
        if loss_after:  # the loss recomputed on the updated model: a mistake
            loss = loss_08(model(part.tokens, part.images), part.tokens)
        history["loss_every_step"].append(loss if loss_tensors else loss.item())  # the tensor itself: a mistake
        if step == 0 and first_after:  # step 0 logged after the first update: a mistake
            log(0, loss.item())
        if extra_loss and step == 0:  # the step-0 loss appended twice: a mistake
            history["loss_every_step"].append(loss.item())
        if logged and not log_early:
            log(step if log_index else step + 1, loss.item())
    if eval_at_end:
        model.eval()
    return history


def test_09_train_loop_reference_is_the_packages():
    """The loop the check names mistakes with gives train_flamingo's history when it makes none."""
    import copy

    args = dict(steps=6, batch_size=8, lr=5e-3, gate_lr=5e-2, weight_decay=0.5, log_every=4, seed=0)
    model, data = lesson09.tiny_setup(0)
    package = flamingo_lite.tiny.training.train_flamingo(copy.deepcopy(model).freeze_pretrained(), data, **args,
                                                         device="cpu", progress=False)
    assert lesson09.reference_loop(model, data, **args) == package
    assert package["step"] == [0, 4, 6] and package["attn_gate_tanh"][0] == [0.0, 0.0] and package["attn_gate_tanh"][-1] != [0.0, 0.0]


@pytest.mark.filterwarnings("ignore:Detected call of `lr_scheduler.step\\(\\)` before")  # the loop without optimizer.step
def test_09_train_loop():
    fails(lesson09.check_train_loop, stub, match="not written yet")
    lesson09.check_train_loop(loop_09)
    fails(lesson09.check_train_loop, lambda *a, **k: loop_09(*a, **k, zero_grad=False), match="gradients accumulate")
    fails(lesson09.check_train_loop, lambda *a, **k: loop_09(*a, **k, freeze=False), match="language model changed")
    fails(lesson09.check_train_loop, lambda *a, **k: loop_09(*a, **k, gate_decay=True), match="gates are in the weight-decay group")
    fails(lesson09.check_train_loop, lambda *a, **k: loop_09(*a, **k, one_group=True), match="one group with the other weights")
    fails(lesson09.check_train_loop, lambda *a, **k: loop_09(*a, **k, cosine=False), match="learning rate stays constant")
    fails(lesson09.check_train_loop, lambda *a, **k: loop_09(*a, **k, shift=False), match="not shifted")
    fails(lesson09.check_train_loop, lambda *a, **k: loop_09(*a, **k, step_opt=False), match="did not change")
    fails(lesson09.check_train_loop, lambda *a, **k: loop_09(*a, **k, first_log=False), match="log step 0")
    fails(lesson09.check_train_loop, lambda *a, **k: loop_09(*a, **k, keys=False), match="ff_gate_tanh")
    # "step" counts the updates done, from 1; a loop one off is told so
    fails(lesson09.check_train_loop, lambda *a, **k: loop_09(*a, **k, log_index=True),
          match=r"logs the steps \[0, 3, 5\], train_flamingo logs \[0, 4, 6\]: off by one; 'step' counts the optimizer updates")
    fails(lesson09.check_train_loop, lambda *a, **k: loop_09(*a, **k, index_condition=True),
          match=r"logs the steps \[0, 1, 5, 6\].*off by one")
    fails(lesson09.check_train_loop, lambda *a, **k: loop_09(*a, **k, index_condition=True, log_index=True),
          match=r"logs the steps \[0, 0, 4, 5\].*off by one")
    fails(lesson09.check_train_loop, lambda *a, **k: loop_09(*a, **k, log_early=True),
          match=r"gates are those before its update, off by one")
    fails(lesson09.check_train_loop, lambda m, d, **k: loop_09(m, d, **{**k, "seed": k["seed"] + 1}), match="first batch")
    fails(lesson09.check_train_loop, lambda m, d, **k: loop_09(m, d, **{**k, "lr": k["lr"] * 2}), match="no usual mistake")
    fails(lesson09.check_train_loop, lambda *a, **k: None, match="return the history")
    fails(lesson09.check_train_loop, lambda *a, **k: loop_09(*a, **k, train_mode=False),
          match=r"takes 6 of its 6 optimizer steps with the model in eval mode .*call `model\.train\(\)` before the loop")


@pytest.mark.filterwarnings("ignore:Detected call of `lr_scheduler.step\\(\\)` before")
def test_09_train_loop_names_locations_eval_zero_grad_order_decay_and_loss_after():
    """The loop trains a model whose forward takes (tokens, images), as the learner's MyFlamingo does."""
    fails(lesson09.check_train_loop, lambda *a, **k: loop_09(*a, **k, locations=True),
          match=r"raised TypeError: .*forward\(\) takes 3 positional arguments.*passes `part\.media_locations`.*"
                r"`model\(part\.tokens, part\.images\)`")
    fails(lesson09.check_train_loop, lambda *a, **k: loop_09(*a, **k, eval_at_end=False),
          match=r"leaves the model in training mode: end it with `model\.eval\(\)`")
    fails(lesson09.check_train_loop, lambda *a, **k: loop_09(*a, **k, keep_partial=True),
          match=r"each epoch ends with a smaller batch of the 4 sequences left over \(44 is not a multiple of 8\)")
    fails(lesson09.check_train_loop, lambda *a, **k: loop_09(*a, **k, schedule_first=True),
          match=r"`schedule\.step\(\)` comes before `optimizer\.step\(\)`")
    fails(lesson09.check_train_loop, lambda *a, **k: loop_09(*a, **k, lambda_ahead=True),
          match=r"next step's learning rate.* or the schedule's lambda reads step s \+ 1")
    fails(lesson09.check_train_loop, lambda *a, **k: loop_09(*a, **k, gate_log="raw"),
          match=r"the gates are logged without their tanh")
    fails(lesson09.check_train_loop, lambda *a, **k: loop_09(*a, **k, gate_log="swapped"),
          match=r"the two gates are swapped in the history")
    fails(lesson09.check_train_loop, lambda *a, **k: loop_09(*a, **k, optimizer_class=torch.optim.Adam),
          match=r"steps with Adam, not AdamW: the paper trains with AdamW \(App\. B\.1\.2\)")
    fails(lesson09.check_train_loop, lambda *a, **k: loop_09(*a, **k, gate_log="attn twice"),
          match=r"'ff_gate_tanh' holds the attention gates")
    fails(lesson09.check_train_loop, lambda *a, **k: loop_09(*a, **k, first_after=True),
          match=r"step 0's entry is logged after the first update")
    fails(lesson09.check_train_loop, lambda *a, **k: loop_09(*a, **k, log_last=False),
          match=r"logs the steps \[0, 4\], train_flamingo logs \[0, 4, 6\]: the last step is not logged")
    fails(lesson09.check_train_loop, lambda *a, **k: loop_09(*a, **k, extra_loss=True),
          match=r"'loss_every_step' has 7 entries for 6 steps")
    fails(lesson09.check_train_loop, lambda *a, **k: loop_09(*a, **k, gate_log="abs"),
          match=r"logged as sizes, `abs\(tanh\(gate\)\)`")
    fails(lesson09.check_train_loop, lambda *a, **k: loop_09(*a, **k, gate_log="tanh twice"),
          match=r"logged as tanh\(tanh\(gate\)\), the tanh applied twice")
    fails(lesson09.check_train_loop, lambda *a, **k: loop_09(*a, **k, loss_tensors=True),
          match=r"history's 'loss_every_step' holds tensors, not numbers: append `loss\.item\(\)`.*graph alive")
    fails(lesson09.check_train_loop, lambda *a, **k: loop_09(*a, **k, blocks_by_index=True),
          match=r"raised KeyError: '1'; the check's model has gated blocks before LM layers 0 and 2")
    for late in ("none", "zeros"):  # set_to_none=True, then False (the weights still decay)
        fails(lesson09.check_train_loop, lambda *a, **k: loop_09(*a, **k, zero_grad_late=late),
              match=r"calls `optimizer\.zero_grad\(\)` after `loss\.backward\(\)`: the gradients are cleared before")
    fails(lesson09.check_train_loop, lambda *a, **k: loop_09(*a, **k, step_opt=False),
          match=r"did not change: `optimizer\.step\(\)` is never called")
    fails(lesson09.check_train_loop, lambda *a, **k: loop_09(*a, **k, decay_off=True),
          match=r"weights are not decayed as asked .*`weight_decay=0\.0` is passed to parameter_groups")
    fails(lesson09.check_train_loop, lambda *a, **k: loop_09(*a, **k, loss_after=True),
          match=r"the loss is computed again after the update")
    fails(lesson09.check_train_loop, lambda *a, **k: loop_09(*a, **k, order_every_step=True),
          match=r"a new random order is drawn at every step")


def test_09_train_loop_blames_a_freeze_that_took_the_new_parts_too():
    """A freeze_pretrained that freezes the whole model: backward (groups with empty lists) or AdamW (no parameters)
    raises, and the verdict points back at the freeze, not only at torch's words."""
    def frozen_through(model, data, *, one_list=False, **kw):
        model.requires_grad_(False).train()
        trainable = [p for p in model.parameters() if p.requires_grad]
        groups = trainable if one_list else [{"params": trainable, "weight_decay": 0.5}, {"params": [], "lr": 0.05}]
        optimizer = torch.optim.AdamW(groups, lr=kw["lr"])
        part = data[torch.arange(kw["batch_size"])]
        loss = lesson09.training.next_token_loss(model(part.tokens, part.images), part.tokens)
        loss.backward()
        optimizer.step()

    for one_list, torch_words in ((False, "does not require grad"), (True, "empty parameter list")):
        fails(lesson09.check_train_loop, lambda *a, **k: frozen_through(*a, **k, one_list=one_list),
              match=f"{torch_words}.*\\nNo parameter of the model trains after your freeze_pretrained.*resampler "
                    r"and the gated blocks were frozen with the rest.*check_freeze")


def test_09_train_loop_keeps_the_global_random_numbers():
    torch.manual_seed(3)
    lesson09.check_train_loop(loop_09)
    after = torch.rand(3)
    torch.manual_seed(3)
    assert torch.equal(after, torch.rand(3))


def test_09_train_loop_hint_calls_the_model_as_the_lesson_does(capsys):
    hint("09.loop", 2)
    out = capsys.readouterr().out
    assert "model(part.tokens, part.images)" in out and "media_locations)" not in out and "model.eval()" in out


# ---------------------------------------------------------------------------------------------------------- 09

def segment_class(offset=1, softmax_dim=-1, blind_first=False, from_zero=False, first_row=False, detach=False,
                  every_image=False, markers_out=False, last_out=False, residual=False, heads_fixed=None,
                  times_fixed=None, float32_buffer=False, width_from_x=False, extra_gate=False):
    class Layer(nn.Module):
        def __init__(self, *, dim, dim_head=64, heads=8):
            super().__init__()
            self.heads, self.scale = heads, dim_head**-0.5
            inner = dim_head * heads
            self.norm = nn.LayerNorm(dim)
            self.to_q = nn.Linear(dim, inner, bias=False)
            self.to_kv = nn.Linear(dim, inner * 2, bias=False)
            self.to_out = nn.Linear(inner, dim, bias=False)
            if extra_gate:  # a parameter the reference does not have
                self.gate = nn.Parameter(torch.zeros(1))

        def forward(self, x, media, media_locations):
            h = heads_fixed or self.heads  # heads_fixed: the lesson's 2 typed in
            q = rearrange(self.to_q(self.norm(x)), "b n (h e) -> b h n e", h=h)
            k, v = self.to_kv(media).chunk(2, dim=-1)
            k = rearrange(k, "b t m (h e) -> b h t m e", h=h)
            v = rearrange(v, "b t m (h e) -> b h t m e", h=h)
            if detach:
                k, v = k.detach(), v.detach()  # no gradient reaches to_kv or the media
            times = masks.text_time(media_locations)
            out = torch.zeros(q.shape) if float32_buffer else torch.zeros_like(q)
            if width_from_x:  # the heads' width read off x: right only while heads * dim_head == dim
                out = x.new_zeros(x.shape[0], h, x.shape[1], x.shape[-1] // h)
            last = times_fixed or media.shape[1] + offset - (1 if last_out else 0)  # times_fixed: the example's 4
            for row in range(x.shape[0]):
                for k_time in range(0 if from_zero else offset, last):
                    in_segment = times[0 if first_row else row] == k_time
                    if markers_out:
                        in_segment = in_segment & ~media_locations[row]
                    tokens = in_segment.nonzero().flatten()
                    index = k_time - offset  # from_zero: text time 0 reads index -1, the last media
                    if every_image and k_time >= 1 and len(tokens):
                        k_all = rearrange(k[row], "h t m e -> h (t m) e")
                        v_all = rearrange(v[row], "h t m e -> h (t m) e")
                        scores = q[row, :, tokens] @ k_all.transpose(-1, -2) * self.scale
                        out[row, :, tokens] = scores.softmax(dim=-1) @ v_all
                        continue
                    if blind_first and k_time == 1:
                        tokens = ((times[row] == 0) | (times[row] == 1)).nonzero().flatten()
                    if len(tokens):
                        scores = q[row, :, tokens] @ k[row, :, index].transpose(-1, -2) * self.scale
                        out[row, :, tokens] = scores.softmax(dim=softmax_dim) @ v[row, :, index]
            out = self.to_out(rearrange(out, "b h n e -> b n (h e)"))
            return out + x if residual else out

    return Layer


def test_09_segment_layer():
    class Stub(segment_class()):
        def forward(self, x, media, media_locations):
            raise NotImplementedError

    fails(lesson10.check_segment_layer, Stub, match="not written yet")
    lesson10.check_segment_layer(segment_class())
    fails(lesson10.check_segment_layer, segment_class(offset=0), match="numbered from 0")
    fails(lesson10.check_segment_layer, segment_class(softmax_dim=-2), match="softmax")
    fails(lesson10.check_segment_layer, segment_class(blind_first=True), match="before the first image")
    fails(lesson10.check_segment_layer, segment_class(from_zero=True), match="text before the first image is not 0 "
          "\\(in row 0\\).*a loop from 0 reads media -1")
    fails(lesson10.check_segment_layer, segment_class(first_row=True), match="right for the first sample and wrong for "
          "the others")
    fails(lesson10.check_segment_layer, segment_class(every_image=True), match="attends to the latents of all the images")
    fails(lesson10.check_segment_layer, segment_class(markers_out=True), match="<image> tokens are left out of their segments")
    fails(lesson10.check_segment_layer, segment_class(last_out=True), match="right on the example but not on .*the last "
          "image's segment is left out")
    with pytest.raises(ExerciseFailed) as failed:
        lesson10.check_segment_layer(segment_class(residual=True))
    assert "text before the first image is not 0" not in str(failed.value)  # a residual is not a text-time-0 bug
    fails(lesson10.check_segment_layer, segment_class(detach=True), match=r"^your segment layer: .*to_kv\.weight gets no gradient.*would never train")

    class NoOut(segment_class()):
        def forward(self, x, media, media_locations):
            to_out, self.to_out = self.to_out, nn.Identity()
            try:
                return super().forward(x, media, media_locations)
            finally:
                self.to_out = to_out

    fails(lesson10.check_segment_layer, NoOut, match="to_out")

    class HandWrittenMaskView(segment_class()):  # right in every number, at the mask view's cost
        def every_pair(self, x, media, media_locations):
            """q (b, h, n, e), k and v (b, h, t*m, e), and which latents each token may see (b, 1, n, t*m)."""
            q = rearrange(self.to_q(self.norm(x)), "b n (h e) -> b h n e", h=self.heads)  # (b, h, n, e)
            k, v = self.to_kv(media).chunk(2, dim=-1)  # 2 x (b, t, m, h*e)
            k = rearrange(k, "b t m (h e) -> b h (t m) e", h=self.heads)  # (b, h, t*m, e)
            v = rearrange(v, "b t m (h e) -> b h (t m) e", h=self.heads)  # (b, h, t*m, e)
            times = masks.text_time(media_locations)  # (b, n)
            image_of_latent = torch.arange(media.shape[1]).repeat_interleave(media.shape[2]) + 1  # (t*m,)
            return q, k, v, times[:, None, :, None] == image_of_latent  # allowed: (b, 1, n, t*m)

        def forward(self, x, media, media_locations):
            q, k, v, allowed = self.every_pair(x, media, media_locations)
            scores = (q @ k.transpose(-1, -2) * self.scale).masked_fill(~allowed, float("-inf"))  # (b, h, n, t*m)
            out = torch.nan_to_num(scores.softmax(dim=-1)) @ v  # (b, h, n, e): rows that see nothing are 0
            return self.to_out(rearrange(out, "b h n e -> b n (h e)"))  # (b, n, d)

    fails(lesson10.check_segment_layer, HandWrittenMaskView,
          match=r"right numbers at the mask view's cost: .* takes 393,216 FLOPs, where the segment view needs 24,576")

    class SdpaMaskView(HandWrittenMaskView):  # the same mask handed to SDPA, whose insides the CPU counter does not see
        def forward(self, x, media, media_locations):
            q, k, v, allowed = self.every_pair(x, media, media_locations)
            out = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=allowed, scale=self.scale)
            return self.to_out(rearrange(out.nan_to_num(0.0), "b h n e -> b n (h e)"))  # (b, n, d)

    fails(lesson10.check_segment_layer, SdpaMaskView,
          match=r"right numbers at the mask view's cost: .* takes 393,216 FLOPs, where the segment view needs 24,576")
    assert torch.nn.functional.scaled_dot_product_attention.__name__ == "scaled_dot_product_attention"  # put back

    class PlusOne(segment_class()):  # text time k read as media index k: runs past the last media
        def forward(self, x, media, media_locations):
            return media[:, media.shape[1]]

    fails(lesson10.check_segment_layer, PlusOne, match="numbered from 0|indexed past")


def test_10_segment_layer_names_sizes_typed_in_a_float32_buffer_and_its_parameters():
    fails(lesson10.check_segment_layer, segment_class(heads_fixed=2), match=r"built with heads=4, dim_head=6")
    fails(lesson10.check_segment_layer, segment_class(times_fixed=4), match=r"on a row with 4 markers")
    fails(lesson10.check_segment_layer, segment_class(width_from_x=True), match=r"built with heads=4, dim_head=6")
    fails(lesson10.check_segment_layer, segment_class(float32_buffer=True),
          match=r"runs in float32 but raises in float64 \(RuntimeError: .*`q\.new_zeros\(shape\)`")
    fails(lesson10.check_segment_layer, segment_class(extra_gate=True),
          match=r"parameters are not the reference's \(norm, to_q, to_kv, to_out\): not in the reference gate\.")


def test_10_segment_lengths_on_a_copy_and_with_four_media():
    x, media, loc = lesson10.example_inputs()
    given = loc.clone()

    def wipes(ml, t):  # the right counts, then the markers erased in place
        out = (masks.text_time(ml)[..., None] == torch.arange(1, t + 1)).sum(dim=1)
        ml[:] = False
        return out

    fails(lesson10.check_segment_lengths, wipes, loc, 3, match=r"changed its input media_locations in place")
    assert torch.equal(loc, given)  # the notebook's batch is as it was
    fails(lesson10.check_segment_lengths, lambda ml, t: (masks.text_time(ml)[..., None] == torch.arange(1, 4)).sum(dim=1),
          loc, 3, match=r"four markers and 4 media.*take the number of media from num_media")


def test_09_exercises():
    x, media, loc = lesson10.example_inputs()

    def lengths(ml, t, start=1):
        times = masks.text_time(ml)
        return (times[..., None] == torch.arange(start, t + start)).sum(dim=1)

    fails(lesson10.check_segment_lengths, stub, loc, 3, match="not written yet")
    lesson10.check_segment_lengths(lengths, loc, 3)
    fails(lesson10.check_segment_lengths, lambda ml, t: lengths(ml, t, 0), loc, 3, match="numbered from 0")
    fails(lesson10.check_segment_lengths, lambda ml, t: ((masks.text_time(ml)[..., None] == torch.arange(1, t + 1))
                                                        & ~ml[..., None]).sum(dim=1), loc, 3,
          match="counted without its <image> token")

    def scores(ml, t, m, h, view, blind=False):
        b, n = ml.shape
        if view == "mask":
            return b * h * n * t * m
        return h * m * (ml.numel() if blind else int((~masks.rows_without_media(ml)).sum()))

    fails(lesson10.check_scores_computed, stub, loc, 3, 4, 2, match="not written yet")
    lesson10.check_scores_computed(scores, loc, 3, 4, 2)
    fails(lesson10.check_scores_computed, lambda *a: scores(*a, blind=True), loc, 3, 4, 2, match="before the first image")
    fails(lesson10.check_scores_computed, lambda ml, t, m, h, view: scores(ml, int(ml.sum(-1).max()), m, h, view), loc,
          3, 4, 2, match=r"counts a column for each marker \(4\), but num_media=6")

    def without(factor):  # one factor of the count left out
        def count(ml, t, m, h, view):
            b, n = ml.shape
            seeing = int((~masks.rows_without_media(ml)).sum())
            sizes = {"b": b, "n": n, "t": t, "m": m, "h": h} if view == "mask" else {"seeing": seeing, "m": m, "h": h}
            return math.prod(v for k, v in sizes.items() if k != factor or (view != "mask" and factor in "bnt"))

        return count

    for factor, named in [("b", "the batch size b"), ("h", "heads"), ("m", "num_latents m"), ("t", "num_media t")]:
        fails(lesson10.check_scores_computed, without(factor), loc, 3, 4, 2,
              match=rf"times too small, .*a factor is missing \(.*{named}.*\)")


@pytest.mark.parametrize("key", ["06.forward", "08.class", "08.class.init", "08.class.forward", "08.placement", "09.loss", "09.freeze", "09.groups",
                                 "09.greedy", "09.loop", "10.segments", "10.lengths", "10.scores"])
def test_every_step_has_a_hint(key, capsys):
    hint(key)
    assert capsys.readouterr().out.startswith(f"Hint ({key}):")


def test_09_train_loop_names_without_the_warnings_of_its_own_wrong_loops():
    """Naming a mistake runs wrong loops, one of them with the schedule before the update: torch's warning about that
    one is the check's, and the learner, whose loop is right in that respect, never sees it."""
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fails(lesson09.check_train_loop, lambda *a, **k: loop_09(*a, **k, gate_log="swapped"), match="swapped")
    assert not [w for w in caught if "lr_scheduler" in str(w.message)]


def test_09_train_loop_names_a_cosine_one_step_short_and_clipped_gradients():
    fails(lesson09.check_train_loop, lambda *a, **k: loop_09(*a, **k, cosine_over=k["steps"] - 1),
          match=r"the cosine spans steps - 1 steps")
    for clip in (0.1, 0.05):
        fails(lesson09.check_train_loop, lambda *a, **k: loop_09(*a, **k, clip=clip),
              match=rf"the gradients are clipped \(`clip_grad_norm_\(\.\.\., {clip}\)`")


def test_09_loss_on_probabilities_is_named():
    def softmax_first(logits, tokens, pad_id=0):
        v = logits.shape[-1]
        return F.cross_entropy(logits[:, :-1].softmax(dim=-1).reshape(-1, v), tokens[:, 1:].reshape(-1),
                               ignore_index=pad_id)

    fails(lesson09.check_loss, softmax_first, match=r"F.cross_entropy was given probabilities .*applied twice")


def test_08_placement_one_layer_too_many_is_named():
    fails(lesson08.check_placement, lambda d, e: [i for i in range(d + 1) if i % e == 0],
          match=r"xattn_layer_indices\(4, 1\) = \[0, 1, 2, 3, 4\]: layer 4 is past the last.*range\(depth\)")


def test_09_loss_with_label_smoothing_is_named():
    def smoothed(logits, tokens, pad_id=0):
        v = logits.shape[-1]
        return F.cross_entropy(logits[:, :-1].reshape(-1, v), tokens[:, 1:].reshape(-1), ignore_index=pad_id,
                               label_smoothing=0.1)

    fails(lesson09.check_loss, smoothed, match=r"the targets are smoothed \(`label_smoothing=0\.1`\)")


def test_09_loss_with_targets_shifted_by_two_or_rolled_is_named():
    def shifted_by_two(logits, tokens, pad_id=0):
        v = logits.shape[-1]
        return F.cross_entropy(logits[:, :-2].reshape(-1, v), tokens[:, 2:].reshape(-1), ignore_index=pad_id)

    def rolled(shift):
        def loss(logits, tokens, pad_id=0):  # every position kept, the targets moved by a roll that wraps round
            v = logits.shape[-1]
            return F.cross_entropy(logits.reshape(-1, v), tokens.roll(shift, dims=1).reshape(-1), ignore_index=pad_id)

        return loss

    fails(lesson09.check_loss, shifted_by_two, match=r"the targets are shifted one place too far: .* a shift of one")
    fails(lesson09.check_loss, rolled(-1), match=r"the targets are rolled \(`tokens\.roll\(-1, dims=1\)`\): the roll")
    fails(lesson09.check_loss, rolled(1), match=r"the targets are rolled the wrong way \(`tokens\.roll\(1, dims=1\)`\)")


def test_06_a_block_right_for_batch_1_only_or_all_previous_by_default_is_named():
    def first_row_only(self, x, media, loc):  # right on the one-sentence example
        y = right(self, x[:1], media[:1], None if loc is None else loc[:1])
        return y.expand_as(x)

    fails(lesson06.check_forward, block_class(first_row_only), match=r"right on the example but not on a batch of 3")

    class AllPreviousByDefault(block_class(right)):
        def __init__(self, *, dim, dim_head=64, heads=8, ff_mult=4, only_attend_immediate_media=False):
            super().__init__(dim=dim, dim_head=dim_head, heads=heads, ff_mult=ff_mult,
                             only_attend_immediate_media=only_attend_immediate_media)

    fails(lesson06.check_forward, AllPreviousByDefault, match=r"built without only_attend_immediate_media runs in the "
                                                             r"all-previous mode: keep the constructor's default")


def test_08_flamingo_class_names_sizes_typed_in_and_a_forward_that_cuts_the_graph():
    config = FlamingoConfig()
    fails(lesson08.check_flamingo_class, flamingo_class(num_latents=8), config, match=r"resampler\.latents")
    fails(lesson08.check_flamingo_class, flamingo_class(no_media_embeds=True), config, match=r"media_pos_emb")
    for cut in ("no_grad", "detach"):
        fails(lesson08.check_flamingo_class, flamingo_class(cut=cut), config,
              match=r"gets no gradient .*they require grad, so your forward cuts them off: a `torch\.no_grad\(\)` or "
                    r"`\.detach\(\)`")
    fails(lesson08.check_flamingo_class, flamingo_class(freeze_all=True), config,
          match=r"no parameter of your model gets a gradient: only the vision encoder and the language model are "
                r"frozen; the resampler and the gated blocks must train\.$")


def test_06_a_gate_of_another_dtype_is_named_not_the_feed_forward():
    class Float64Gate(block_class(right)):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.attn_gate = nn.Parameter(torch.tensor([0.0], dtype=torch.float64))

    fails(lesson06.check_forward, Float64Gate, match=r"attn_gate is torch\.float64, its layers torch\.float32")


@pytest.mark.parametrize("key", ["08.class", "08.class.init", "08.class.forward"])
def test_08_class_hints_say_more_at_level_2(key, capsys):
    hint(key)
    first = capsys.readouterr().out
    hint(key, 2)
    second = capsys.readouterr().out
    assert first.split(":", 1)[1].strip() != second.split(":", 1)[1].strip()


def test_06_and_08_blocks_in_a_plain_list_or_dict_are_named_with_why():
    class Listed(block_class(right)):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            layers = [self.attn, self.ff]
            del self.attn, self.ff
            self.layers = layers  # a plain list: PyTorch does not see the layers inside

        def forward(self, x, media, media_locations=None):
            attn, ff = self.layers
            x = x + attn(x, media, media_locations) * self.attn_gate.tanh()
            return x + ff(x) * self.ff_gate.tanh()

    fails(lesson06.check_forward, Listed, match=r"keeps layers in a plain Python list, `layers`")
    fails(lesson08.check_flamingo_class, flamingo_class(plain_dict=True), FlamingoConfig(),
          match=r"keeps layers in a plain Python dict, `xattn`.*`self\.xattn = nn\.ModuleDict\(\.\.\.\)`")


def test_06_gate_gradient_with_a_block_whose_gates_get_no_gradient_names_the_block():
    def gates_detached(self, x, media, loc):
        x = x + self.attn(x, media, loc) * self.attn_gate.detach().tanh()
        return x + self.ff(x) * self.ff_gate.detach().tanh()

    def by_hand(block, inputs, target):  # right: the block is what is wrong
        x, m, l = inputs
        with torch.no_grad():
            return (2 * (x - target) / x.numel() * block.attn(x, m, l)).sum()

    fails(lesson06.check_attn_gate_gradient, by_hand, block_class(gates_detached),
          match=r"your block's gates get no gradient .*run lesson06.check_forward on your block first")


def test_09_greedy_that_appends_float_ids_is_named():
    def float_ids(model, prompt, images, *, eoc_id, max_new_tokens=5):  # right ids, appended as floats
        ids, new = prompt.clone(), []
        for _ in range(max_new_tokens):
            nid = int(model(ids[None], images[None])[0, -1].argmax())
            new.append(nid)
            ids = torch.cat([ids, torch.tensor([nid], dtype=torch.float32)])
            if nid == eoc_id:
                break
        return new

    fails(lesson09.check_greedy, float_ids, match=r"the model got token ids of dtype torch.float32, not torch.long")


def test_10_a_segment_layer_that_calls_the_packages_segment_attend_is_named():
    from flamingo_lite.segments import segment_attend, segment_layout

    class PackageSegments(segment_class()):  # the right numbers, from step 6's one call: the package's answer
        def forward(self, x, media, media_locations):
            q = self.to_q(self.norm(x))  # (b, n, h*e)
            k, v = self.to_kv(media).chunk(2, dim=-1)  # 2 x (b, t, m, h*e)
            layout = segment_layout(media_locations, media.shape[1])
            out = segment_attend(q, k, v, layout, heads=self.heads, scale=self.scale)  # (b, n, h*e)
            return self.to_out(out)

    fails(lesson10.check_segment_layer, PackageSegments,
          match=r"calls flamingo_lite.segments.segment_attend, the package's own answer to this exercise")


def test_09_loss_with_the_vocabulary_size_written_in_is_named():
    def twelve(logits, tokens, pad_id=0):  # right for the course's 12 words only
        return F.cross_entropy(logits[:, :-1].reshape(-1, 12), tokens[:, 1:].reshape(-1), ignore_index=pad_id)

    fails(lesson09.check_loss, twelve, match=r"vocabulary of 20 raised \w+Error.*the vocabulary size is written "
                                             r"into your code: take it from the logits, `logits.shape\[-1\]`")
