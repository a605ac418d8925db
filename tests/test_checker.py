"""The learner's checker: copies reference weights in, compares outputs, says what is wrong in plain words."""
import pytest
import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

import flamingo_lite as fl


class MyCrossAttention(fl.MaskedCrossAttention):
    """A learner's module that forgets the mask."""

    def forward(self, x, media, media_locations=None):
        return super().forward(x, media, None)


@pytest.mark.parametrize(
    "make",
    [
        lambda: fl.FeedForward(16, mult=2),
        lambda: fl.PerceiverAttention(dim=16, dim_head=4, heads=2),
        lambda: fl.PerceiverResampler(dim=16, depth=2, dim_head=4, heads=2, num_latents=3),
        lambda: fl.MaskedCrossAttention(dim=16, dim_head=4, heads=2, only_attend_immediate_media=False),
        lambda: fl.GatedCrossAttentionBlock(dim=16, dim_head=4, heads=2, ff_mult=2),
    ],
)
def test_a_correct_module_passes_against_the_class(make, capsys):
    learner = make()
    result = fl.check_module(learner, type(learner))
    assert result.passed and bool(result) and result.max_abs_diff <= 1e-5
    assert "matches flamingo_lite." in capsys.readouterr().out
    # the reference's weights were copied in: the learner now equals a fresh reference built the same way
    torch.manual_seed(0)


def test_weights_are_copied_from_a_reference_instance_without_changing_it():
    reference = fl.MaskedCrossAttention(dim=16, dim_head=4, heads=2)
    before = {k: v.clone() for k, v in reference.state_dict().items()}
    learner = fl.MaskedCrossAttention(dim=16, dim_head=4, heads=2)
    own = {k: v.clone() for k, v in learner.state_dict().items()}
    assert fl.check_module(learner, reference, verbose=False)  # passes only if the reference's weights were used
    for key, value in reference.state_dict().items():
        assert torch.equal(value, before[key])
        assert torch.equal(learner.state_dict()[key], own[key])  # and the learner gets its own back


def test_a_wrong_forward_is_reported_with_the_largest_difference(capsys):
    result = fl.check_module(MyCrossAttention(dim=16, dim_head=4, heads=2), fl.MaskedCrossAttention)
    out = capsys.readouterr().out
    assert not result.passed and result.max_abs_diff > 1e-3 and result.num_mismatched > 0
    assert "differs" in out and "largest difference" in out and str(result.where) in out
    with pytest.raises(AssertionError, match="differs"):
        fl.check_module(MyCrossAttention(dim=16, dim_head=4, heads=2), fl.MaskedCrossAttention,
                        raise_on_mismatch=True, verbose=False)


def test_zero_gates_are_opened_so_a_broken_block_is_caught():
    class NoAttention(fl.GatedCrossAttentionBlock):
        def forward(self, x, media, media_locations=None):
            return x + self.ff(x) * self.ff_gate.tanh()

    assert not fl.check_module(NoAttention(dim=16, dim_head=4, heads=2), fl.GatedCrossAttentionBlock, verbose=False)
    assert not fl.check_module(NoAttention(dim=16, dim_head=4, heads=2), fl.GatedCrossAttentionBlock,
                               open_gates=True, verbose=False).passed


def test_state_dict_mismatch_lists_missing_unexpected_and_misshaped(capsys):
    class Learner(nn.Module):
        def __init__(self):
            super().__init__()
            self.heads = 2
            self.norm = nn.LayerNorm(16)
            self.to_q = nn.Linear(16, 8, bias=False)
            self.kv = nn.Linear(16, 16, bias=False)
            self.to_out = nn.Linear(4, 16, bias=False)

    result = fl.check_module(Learner(), fl.MaskedCrossAttention, reference_kwargs=dict(dim=16, dim_head=4, heads=2))
    out = capsys.readouterr().out
    assert not result.passed
    assert result.missing_keys == ["to_kv.weight"] and result.unexpected_keys == ["kv.weight"]
    assert result.shape_mismatches == [("to_out.weight", (16, 4), (16, 8))]
    assert "Missing" in out and "to_kv.weight" in out and "Unexpected" in out and "Wrong shape" in out
    # the report shows the reference's own names and shapes: the learner has no `reference` object to print
    assert "The reference's parameters: norm.weight (16,), norm.bias (16,), to_q.weight (8, 16), to_kv.weight (16, 16), " \
           "to_out.weight (16, 8)." in out
    assert "print(reference)" not in out


def test_state_dict_report_of_a_large_reference_lists_twelve_and_counts_the_rest():
    result = fl.check_module(nn.Linear(4, 4), fl.PerceiverResampler, reference_kwargs=dict(dim=8, depth=2, dim_head=4, heads=2,
                             num_latents=3, num_media_embeds=2), verbose=False)
    more = len(fl.PerceiverResampler(dim=8, depth=2, dim_head=4, heads=2, num_latents=3, num_media_embeds=2).state_dict()) - 12
    assert not result.passed and more > 0 and f", and {more} more." in result.message


def test_inputs_can_be_given_and_shape_mismatch_is_reported():
    class Halves(nn.Module):
        def __init__(self):
            super().__init__()
            self.ff = fl.FeedForward(8)

        def forward(self, x):
            return self.ff(x)[..., :4]

    ref = nn.Module()
    ref.ff = fl.FeedForward(8)
    ref.forward = lambda x: ref.ff(x)
    result = fl.check_module(Halves(), ref, inputs=(torch.randn(2, 8),), verbose=False)
    assert not result.passed and "shape (2, 4)" in result.message


def test_bad_arguments():
    with pytest.raises(TypeError, match="learner"):
        fl.check_module("not a module", fl.FeedForward)
    with pytest.raises(TypeError, match="reference"):
        fl.check_module(fl.FeedForward(4), 42)


def test_works_against_the_original_code_without_explicit_inputs():
    from flamingo_pytorch import flamingo_pytorch as seed

    original = seed.MaskedCrossAttention(dim=16, dim_head=4, heads=2, only_attend_immediate_media=True)
    assert fl.check_module(fl.MaskedCrossAttention(dim=16, dim_head=4, heads=2), original, verbose=False)
    leaky = seed.MaskedCrossAttention(dim=16, dim_head=4, heads=2, only_attend_immediate_media=False)
    mine = fl.MaskedCrossAttention(dim=16, dim_head=4, heads=2, only_attend_immediate_media=False)
    result = fl.check_module(mine, leaky, verbose=False)
    assert not result.passed and result.where[1] == 0  # the text before the first media, where the original leaks
    assert fl.check_module(fl.FeedForward(8), seed.FeedForward(8), verbose=False)
    assert fl.check_module(fl.PerceiverResampler(dim=8, depth=1, dim_head=4, heads=2),
                           seed.PerceiverResampler(dim=8, depth=1, dim_head=4, heads=2), verbose=False)


# ----------------------------------------------------------------------------------------------------------------
# never leaves the learner stranded


class Stub(fl.PerceiverAttention):
    def forward(self, x, latents):
        raise NotImplementedError("Your turn: write this part")


class Buggy(fl.PerceiverAttention):
    def forward(self, x, latents):
        return x @ latents  # wrong shapes for a matmul


def test_a_forward_that_raises_gives_a_verdict_naming_the_call_and_the_error(capsys):
    result = fl.check_module(Stub(dim=16, dim_head=4, heads=2), fl.PerceiverAttention)
    assert not result.passed and result.error.startswith("NotImplementedError")
    out = capsys.readouterr().out
    assert "Stub is not written yet" in out and "Stub.forward(a tensor (2, 2, 6, 16), a tensor (2, 2, 4, 16))" in out
    result = fl.check_module(Buggy(dim=16, dim_head=4, heads=2), fl.PerceiverAttention, verbose=False)
    assert not result.passed and "Buggy.forward(" in result.message and "raised RuntimeError" in result.message
    assert "return x @ latents" in result.message  # the learner's line
    with pytest.raises(AssertionError, match="not written yet"):
        fl.check_module(Stub(dim=16, dim_head=4, heads=2), fl.PerceiverAttention, raise_on_mismatch=True, verbose=False)


@pytest.mark.parametrize("learner_cls", [fl.PerceiverAttention, Stub, Buggy])
def test_the_learners_module_is_left_exactly_as_it_was(learner_cls):
    torch.manual_seed(3)
    learner = learner_cls(dim=16, dim_head=4, heads=2)
    learner.train()
    learner.norm_media.eval()  # a mixed mode, to be kept as it is
    before = {k: v.clone() for k, v in learner.state_dict().items()}
    modes = [m.training for m in learner.modules()]
    fl.check_module(learner, fl.PerceiverAttention, verbose=False)
    after = learner.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert [m.training for m in learner.modules()] == modes


class MakesNaN(fl.PerceiverAttention):
    def forward(self, x, latents):
        out = super().forward(x, latents)  # (b, t, L, d)
        out[0, 0, 1] = float("nan")
        return out


def test_nan_in_the_output_is_reported_as_nan(capsys):
    result = fl.check_module(MakesNaN(dim=16, dim_head=4, heads=2), fl.PerceiverAttention)
    assert not result.passed and result.num_nan == 16 and result.where == (0, 0, 1, 0)
    out = capsys.readouterr().out
    assert "returns NaN where flamingo_lite.PerceiverAttention has numbers" in out and "16 of" in out
    assert "off by" not in out and "largest difference is inf" not in out


class FixedHeads(fl.MaskedCrossAttention):
    """Splits into 4 heads whatever self.heads says."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.true_heads = self.heads

    def forward(self, x, media, media_locations=None):
        self.heads, self.scale = 4, (self.to_q.out_features // 4) ** -0.5
        try:
            return super().forward(x, media, media_locations)
        finally:
            self.heads, self.scale = self.true_heads, (self.to_q.out_features // self.true_heads) ** -0.5


def test_a_wrong_head_count_is_diagnosed_as_that():
    result = fl.check_module(FixedHeads(dim=16, dim_head=4, heads=2), fl.MaskedCrossAttention, verbose=False)
    assert not result.passed and result.heads_used == 4
    assert "splits into 4 heads, but the module has heads=2" in result.message
    learner = fl.PerceiverAttention(dim=16, dim_head=4, heads=2)
    learner.heads = 3  # does not divide the inner width 8
    result = fl.check_module(learner, fl.PerceiverAttention, verbose=False)
    assert not result.passed and "heads=3" in result.message and "8 numbers per token" in result.message
    assert "Wrong shape" not in result.message


# ----------------------------------------------------------------------------------------------------------------
# code that matches on the example but would never train: each mistake is caught and named


class DetachedWeight(fl.FeedForward):
    """Uses a detached copy of the widening weight: the same numbers, but that weight never learns."""

    def forward(self, x):
        h = F.linear(self[0](x), self[1].weight.detach())  # (b, n, mult*d)
        return self[3](self[2](h))  # (b, n, d)


class NoGradKeysValues(fl.MaskedCrossAttention):
    """Projects the media under torch.no_grad(): to_kv and the media get no gradient."""

    def project(self, x, media):
        q = self.to_q(self.norm(x))  # (b, n, h*e)
        with torch.no_grad():
            k, v = self.to_kv(media).chunk(2, dim=-1)  # 2 x (b, t, m, h*e)
        return q, k, v


class _HalfGradient(torch.autograd.Function):
    """The identity forward, half the gradient backward."""

    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        return grad * 0.5


class HalvesMediaGradient(fl.MaskedCrossAttention):
    def forward(self, x, media, media_locations=None):
        return super().forward(x, _HalfGradient.apply(media), media_locations)


class DetachedAttentionInput(fl.GatedCrossAttentionBlock):
    """The attention reads a detached x: the residual still carries a gradient to x, but not the right one."""

    def forward(self, x, media, media_locations=None):
        x = self.attn(x.detach(), media, media_locations) * self.attn_gate.tanh() + x  # (b, n, d)
        return self.ff(x) * self.ff_gate.tanh() + x  # (b, n, d)


class ZeroesSavedTensor(fl.FeedForward):
    """Zeroes the hidden activations after use, 'to save memory': GELU saved them for its gradient."""

    def forward(self, x):
        h = self[1](self[0](x))  # (b, n, mult*d)
        out = self[3](self[2](h))  # (b, n, d)
        h.zero_()
        return out


class BatchOfTwo(fl.PerceiverAttention):
    """Hard-codes the example's batch size of 2."""

    def forward(self, x, latents):
        q, k, v = self.project(x, latents)  # (b*t, h, L, e), 2 x (b*t, h, n+L, e)
        out = fl.attention.attend(q, k, v, scale=self.scale)  # (b*t, h, L, e)
        return self.to_out(rearrange(out, "(b t) h L e -> b t L (h e)", b=2))  # (b, t, L, d)


class LastMedia(fl.MaskedCrossAttention):
    """Keeps the last media, as many as a row has markers: right only when t equals the number of markers."""

    def forward(self, x, media, media_locations=None):
        if media_locations is not None:
            markers = int(media_locations.sum(dim=-1).max())
            media = media[:, media.shape[1] - markers:]  # (b, markers, m, d)
        return super().forward(x, media, media_locations)


class ArgmaxFirstMarker(fl.MaskedCrossAttention):
    """Finds the text before the first marker with argmax, which says 0 for a row without any marker."""

    def forward(self, x, media, media_locations=None):
        if media_locations is None:
            return super().forward(x, media)
        locations = self.check_inputs(x, media, media_locations)
        q, k, v, mask, _ = self.masked_view(*self.project(x, media), locations)  # (b, h, n, e), 2 x (b, h, t*m, e)
        scores = q @ k.transpose(-1, -2) * self.scale  # (b, h, n, t*m)
        if mask is not None:
            scores = scores.masked_fill(~mask[:, None], -torch.finfo(scores.dtype).max)  # (b, h, n, t*m)
        out = scores.softmax(dim=-1) @ v  # (b, h, n, e)
        first = media_locations.float().argmax(dim=-1)  # (b,): the first marker, or 0 in a row without any
        before = torch.arange(x.shape[1]) < first[:, None]  # (b, n)
        out = out.masked_fill(before[:, None, :, None], 0.0)  # (b, h, n, e)
        return self.to_out(rearrange(out, "b h n e -> b n (h e)"))  # (b, n, d)


class UnstableSoftmax(fl.PerceiverAttention):
    """exp(scores) / sum without subtracting the row's max: overflows on large scores."""

    def forward(self, x, latents):
        q, k, v = self.project(x, latents)  # (b*t, h, L, e), 2 x (b*t, h, n+L, e)
        weights = (q @ k.transpose(-1, -2) * self.scale).exp()  # (b*t, h, L, n+L)
        out = (weights / weights.sum(dim=-1, keepdim=True)) @ v  # (b*t, h, L, e)
        return self.to_out(rearrange(out, "(b t) h L e -> b t L (h e)", b=x.shape[0]))  # (b, t, L, d)


class Float64(fl.FeedForward):
    def forward(self, x):
        return super().forward(x.double().float()).double()  # (b, n, d) in float64


class AddsIntoX(fl.GatedCrossAttentionBlock):
    """Adds the updates into its argument x: the right numbers, but the caller's x is changed."""

    def forward(self, x, media, media_locations=None):
        x += self.attn(x.clone(), media, media_locations) * self.attn_gate.tanh()  # (b, n, d)
        x += self.ff(x.clone()) * self.ff_gate.tanh()  # (b, n, d)
        return x


class ScalesMediaInPlace(fl.MaskedCrossAttention):
    def forward(self, x, media, media_locations=None):
        media.mul_(1.0)  # the same values, but an in-place op on the caller's tensor
        return super().forward(x, media, media_locations)


def _trainable(cls, **kwargs):
    torch.manual_seed(5)
    module = cls(**kwargs)
    module.train()
    for m in list(module.modules())[1::2]:
        m.eval()  # a mixed mode, kept as it is
    for i, p in enumerate(module.parameters()):
        if i % 2 == 0:
            p.grad = torch.full_like(p, 3.0)  # some gradients the learner already had
    return module


@pytest.mark.parametrize(
    "learner, reference, check, named",
    [
        (_trainable(DetachedWeight, dim=16, mult=2), fl.FeedForward, "gradient",
         ["parameter 1.weight gets no gradient", "detach()", "never train"]),
        (_trainable(NoGradKeysValues, dim=16, dim_head=4, heads=2), fl.MaskedCrossAttention, "gradient",
         ["parameter to_kv.weight gets no gradient", "torch.no_grad()", "no gradient reaches the input media"]),
        (_trainable(HalvesMediaGradient, dim=16, dim_head=4, heads=2), fl.MaskedCrossAttention, "gradient",
         ["gradient with respect to the input media differs", "autograd.Function"]),
        (_trainable(DetachedAttentionInput, dim=16, dim_head=4, heads=2), fl.GatedCrossAttentionBlock, "gradient",
         ["gradient with respect to the input x differs", ".detach()"]),
        (_trainable(ZeroesSavedTensor, dim=16, mult=2), fl.FeedForward, "backward",
         ["breaks backward", "in-place op", "modified by an inplace operation"]),
        (_trainable(BatchOfTwo, dim=16, dim_head=4, heads=2), fl.PerceiverAttention, "case",
         ["right on the example but raises on a batch of 3 with one media", "b=2"]),
        (_trainable(LastMedia, dim=16, dim_head=4, heads=2), fl.MaskedCrossAttention, "case",
         ["right on the example but not on more media than markers"]),
        (_trainable(ArgmaxFirstMarker, dim=16, dim_head=4, heads=2), fl.MaskedCrossAttention, "case",
         ["right on the example but not on a row with no marker at all"]),
        (_trainable(UnstableSoftmax, dim=16, dim_head=4, heads=2), fl.PerceiverAttention, "case",
         ["right on the example but not on large attention scores", "NaN or inf", "amax"]),
        (_trainable(Float64, dim=16, mult=2), fl.FeedForward, "dtype", ["returns float64 where", "returns float32"]),
        (_trainable(AddsIntoX, dim=16, dim_head=4, heads=2), fl.GatedCrossAttentionBlock, "inputs",
         ["modifies its input x in place"]),
        (_trainable(ScalesMediaInPlace, dim=16, dim_head=4, heads=2), fl.MaskedCrossAttention, "inputs",
         ["modifies its input media in place"]),
    ],
    ids=lambda v: type(v).__name__ if isinstance(v, nn.Module) else None,
)
def test_a_mistake_that_matches_on_the_example_is_caught_and_named(learner, reference, check, named):
    before = {k: v.clone() for k, v in learner.state_dict().items()}
    grads = [p.grad for p in learner.parameters()]
    modes = [m.training for m in learner.modules()]
    quiet = fl.check_module(learner, reference, check_gradients=False, check_cases=False, verbose=False)
    assert quiet.passed == (check not in ("dtype", "inputs"))  # the outputs match on the example
    assert quiet.failed_check in (None, "dtype", "inputs")
    result = fl.check_module(learner, reference, verbose=False)
    assert not result.passed and result.failed_check == check, result.message
    for words in named:
        assert words in result.message, result.message
    assert "\n" not in result.message  # one sentence, not a report
    # the learner's module is left exactly as it was: weights, the gradients it had, modes
    assert all(torch.equal(before[k], v) for k, v in learner.state_dict().items())
    assert all(p.grad is g for p, g in zip(learner.parameters(), grads))
    assert [m.training for m in learner.modules()] == modes


def test_opting_out_of_the_gradient_check():
    learner = DetachedWeight(dim=16, mult=2)
    assert not fl.check_module(learner, fl.FeedForward, verbose=False)
    assert fl.check_module(learner, fl.FeedForward, check_gradients=False, verbose=False)


def test_the_result_names_what_it_found():
    result = fl.check_module(NoGradKeysValues(dim=16, dim_head=4, heads=2), fl.MaskedCrossAttention, verbose=False)
    assert result.no_gradient == ["to_kv.weight", "media"] and result.wrong_gradient == []
    result = fl.check_module(LastMedia(dim=16, dim_head=4, heads=2), fl.MaskedCrossAttention, verbose=False)
    assert result.case.startswith("more media than markers") and result.inputs[1].shape[1] == 4
    assert result.output.shape == result.expected.shape == (2, 8, 16)
    assert fl.check_module(Float64(dim=16, mult=2), fl.FeedForward, verbose=False).dtype == torch.float64
    assert fl.check_module(AddsIntoX(dim=16, dim_head=4, heads=2), fl.GatedCrossAttentionBlock,
                           verbose=False).changed_inputs == ["x"]


def test_the_callers_inputs_are_never_changed():
    x, media, locations = fl.teaching.checker.example_inputs(fl.GatedCrossAttentionBlock(dim=16, dim_head=4, heads=2))
    kept = x.clone()
    fl.check_module(AddsIntoX(dim=16, dim_head=4, heads=2), fl.GatedCrossAttentionBlock, (x, media, locations), verbose=False)
    assert torch.equal(x, kept)


def test_a_correct_module_passes_every_check_and_is_left_as_it_was(capsys):
    learner = _trainable(fl.GatedCrossAttentionBlock, dim=16, dim_head=4, heads=2)
    before = {k: v.clone() for k, v in learner.state_dict().items()}
    grads = [p.grad for p in learner.parameters()]
    modes = [m.training for m in learner.modules()]
    result = fl.check_module(learner, fl.GatedCrossAttentionBlock, reference_kwargs=dict(dim=16, dim_head=4, heads=2))
    assert result.passed and result.failed_check is None
    assert capsys.readouterr().out == (
        "✓ GatedCrossAttentionBlock matches flamingo_lite.GatedCrossAttentionBlock: output (2, 8, 16), every value "
        "within 1e-05 of the reference\n  (gates attn_gate, ff_gate set to 0.5 so the check sees through them)\n")
    assert all(torch.equal(before[k], v) for k, v in learner.state_dict().items())
    assert all(p.grad is g for p, g in zip(learner.parameters(), grads))
    assert [m.training for m in learner.modules()] == modes


def test_a_parameter_the_reference_freezes_is_not_compared():
    reference = fl.FeedForward(16, mult=2)
    reference[1].weight.requires_grad_(False)
    assert fl.check_module(DetachedWeight(dim=16, mult=2), reference, verbose=False)
    learner = fl.FeedForward(16, mult=2)
    learner[1].weight.requires_grad_(False)
    result = fl.check_module(learner, fl.FeedForward, verbose=False)
    assert not result.passed and "parameter 1.weight has requires_grad=False" in result.message


def test_swapped_norms_are_caught_and_named_though_fresh_norms_are_alike():
    class Swapped(fl.PerceiverAttention):
        def forward(self, x, latents):
            self.norm_media, self.norm_latents = self.norm_latents, self.norm_media
            try:
                return super().forward(x, latents)
            finally:
                self.norm_media, self.norm_latents = self.norm_latents, self.norm_media

    result = fl.check_module(Swapped(dim=16, dim_head=4, heads=2), fl.PerceiverAttention, verbose=False)
    assert not result.passed and result.swapped_norms == ("norm_media", "norm_latents")
    assert "swaps norm_media and norm_latents" in result.message
    assert fl.check_module(fl.PerceiverAttention(dim=16, dim_head=4, heads=2), fl.PerceiverAttention, verbose=False).passed


def test_randomise_norms_changes_only_fresh_norms():
    from flamingo_lite.teaching.checker import randomise_norms

    layer = fl.PerceiverAttention(dim=8, dim_head=4, heads=2)
    with torch.no_grad():
        layer.norm_latents.weight.fill_(2.0)
    assert randomise_norms(layer, seed=0) == ["norm_media"]
    assert bool((layer.norm_latents.weight == 2.0).all()) and not bool((layer.norm_media.weight == 1.0).any())
    other = fl.PerceiverAttention(dim=8, dim_head=4, heads=2)
    randomise_norms(other, seed=0)
    assert torch.equal(other.norm_media.weight, layer.norm_media.weight)  # seeded


class DropsOut(fl.PerceiverResampler):
    """Right in eval mode; in train mode a Dropout the reference lacks changes its output."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.drop = nn.Dropout(0.1)

    def forward(self, x):
        return self.drop(super().forward(x))  # (b, t, L, d)


def test_a_dropout_the_reference_lacks_is_named_and_draws_none_of_the_callers_random_numbers():
    sizes = dict(dim=16, depth=1, dim_head=4, heads=2, num_latents=3)
    learner, reference = DropsOut(**sizes), fl.PerceiverResampler(**sizes)
    state = torch.get_rng_state()
    result = fl.check_module(learner, reference, verbose=False)
    assert torch.equal(state, torch.get_rng_state())
    assert not result.passed and result.failed_check == "train_mode"
    assert "right in eval mode but gives other numbers in train mode" in result.message
    assert "drop (Dropout)" in result.message
    assert learner.training and learner.drop.training  # its modes are put back


def test_a_dropout_the_reference_has_too_is_not_compared_in_train_mode():
    sizes = dict(dim=16, depth=1, dim_head=4, heads=2, num_latents=3)
    result = fl.check_module(DropsOut(**sizes), DropsOut(**sizes), verbose=False)
    assert result.passed, result.message


def test_a_reference_sized_from_the_learner_says_which_sizes_it_checked():
    """Without reference_kwargs the reference takes the learner's sizes, so a block widened by 2 where the spec says 4
    passes as a FeedForward(mult=2): the verdict says so, and with the spec's sizes the wrong width is named."""
    class WidenedBy2(nn.Sequential):
        def __init__(self, dim):
            super().__init__(nn.LayerNorm(dim), nn.Linear(dim, 2 * dim, bias=False), nn.GELU(),
                             nn.Linear(2 * dim, dim, bias=False))

    sized = fl.check_module(WidenedBy2(16), fl.FeedForward, verbose=False)
    assert sized.passed and "built to your module's sizes, dim=16, mult=2: pass reference_kwargs" in sized.message
    spec = fl.check_module(WidenedBy2(16), fl.FeedForward, reference_kwargs=dict(dim=16), verbose=False)
    assert not spec.passed and "1.weight" in spec.message and "(64, 16)" in spec.message
    assert "built to your module's sizes" not in spec.message


def test_check_layer_leaves_out_the_size_note_the_result_names(capsys):
    """An exercise checks its sizes itself, so `check_layer` drops the line `check_module` adds when it sized the
    reference from the learner's module: the line the result names as its `size_note`, and nothing else."""
    from flamingo_lite.teaching.exercises import check_layer

    class Block(nn.Sequential):
        def __init__(self, dim):
            super().__init__(nn.LayerNorm(dim), nn.Linear(dim, 4 * dim, bias=False), nn.GELU(),
                             nn.Linear(4 * dim, dim, bias=False))

    result = check_layer(Block(16), fl.FeedForward, what="your block")
    assert result.size_note and result.size_note.startswith("  (the reference was built to your module's sizes")
    assert result.size_note not in result.message and "✓" in result.message
    printed = capsys.readouterr().out
    assert printed.startswith("OK: your block matches the reference") and "built to your module's sizes" not in printed
    assert check_layer(Block(16), fl.FeedForward, what="your block", quiet=True)
    assert capsys.readouterr().out == ""


class DefaultHeadsFour(fl.PerceiverAttention):
    """Right when built with the spec's sizes, but `heads` defaults to 4 where the reference's is 8."""

    def __init__(self, *, dim, dim_head=64, heads=4):
        super().__init__(dim=dim, dim_head=dim_head, heads=heads)


def test_a_constructor_default_other_than_the_references_is_named(capsys):
    result = fl.check_module(DefaultHeadsFour(dim=16, dim_head=4, heads=2), fl.PerceiverAttention,
                             reference_kwargs=dict(dim=16, dim_head=4, heads=2))
    assert not result and result.failed_check == "defaults"
    assert "default heads=4 is not the reference's, heads=8: keep the spec's defaults" in capsys.readouterr().out
    # the same class with the reference's defaults passes
    assert fl.check_module(fl.PerceiverAttention(dim=16, dim_head=4, heads=2), fl.PerceiverAttention, verbose=False)
