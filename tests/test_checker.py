"""The learner's checker: copies reference weights in, compares outputs, says what is wrong in plain words."""
import pytest
import torch
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
