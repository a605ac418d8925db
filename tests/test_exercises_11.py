"""Mutation tests of lesson 11's check: it fails on the stub with a message, passes with the solution, and names
each mistake it claims to recognise when fed a wrong implementation."""
from __future__ import annotations

import pytest
import torch

from flamingo_lite.teaching.exercises import ExerciseFailed, hint, lesson11


def stub(*args, **kwargs):
    raise NotImplementedError("Your turn")


def fails(check, *args, match: str):
    with pytest.raises(ExerciseFailed, match=match):
        check(*args)


def solution(depth, every, codebase):
    shift = 1 if codebase == "open_flamingo" else 0
    return [i for i in range(depth) if (i + shift) % every == 0]


def test_the_stub_fails_saying_it_is_not_written():
    fails(lesson11.check_gated_layers, stub, match="not written yet")


def test_the_solution_passes(capsys):
    got = lesson11.check_gated_layers(solution)
    assert got[(8, 4, "idefics")] == [0, 4] and got[(8, 4, "open_flamingo")] == [3, 7]
    assert capsys.readouterr().out.startswith("OK")


@pytest.mark.parametrize("wrong,match", [
    (lambda d, k, cb: solution(d, k, "idefics" if cb == "open_flamingo" else "open_flamingo"), "swapped"),
    (lambda d, k, cb: solution(d, k, "idefics"), r"OpenFlamingo's rule is shifted by one"),
    (lambda d, k, cb: solution(d, k, "open_flamingo"), r"IDEFICS's rule is `i % every == 0`"),
    (lambda d, k, cb: [i for i in range(1, d + 1) if (i + (cb == "open_flamingo")) % k == 0], "counted from 1"),
    (lambda d, k, cb: [i for i in range(d) if (i - (cb == "open_flamingo")) % k == 0], "wrong way"),
    (lambda d, k, cb: list(range(d)), "every layer gets a block"),
    (lambda d, k, cb: solution(d, k, cb)[:-1], "no usual mistake matches"),
    (lambda d, k, cb: [i for i in range(d + 1) if (i + (cb == "open_flamingo")) % k == 0],
     r"gated_layers\(8, 4, 'idefics'\) returned \[0, 4, 8\], with 8, which is no layer: a model of depth 8 has layers 0 to 7"),
    (lambda d, k, cb: solution(d, k, cb) + solution(d, k, cb)[:1], r"with a layer listed twice"),
])
def test_each_mistake_is_named(wrong, match):
    fails(lesson11.check_gated_layers, wrong, match=match)


def test_not_a_list_of_ints_is_named():
    fails(lesson11.check_gated_layers, lambda d, k, cb: "0, 4", match="return a list of layer indices")
    fails(lesson11.check_gated_layers, lambda d, k, cb: [float(i) for i in solution(d, k, cb)], match="ints")


def test_the_mistakes_differ_from_the_answer_and_from_each_other():
    right = {key: solution(*key) for key in lesson11._rule(lambda *a: True)}
    outputs = [wrong for _, wrong in lesson11._mistakes()]
    assert all(out != right for out in outputs)
    assert all(a != b for i, a in enumerate(outputs) for b in outputs[i + 1:])


def test_the_hint_exists(capsys):
    hint("11.placement", 2)
    assert "(i + 1) % every == 0" in capsys.readouterr().out


# ---------------------------------------------------------------- the IDEFICS key map


def key_solution(sd):
    c = "cross_attn."
    return {
        "attn.norm.weight": sd["input_layernorm.weight"],
        "attn.to_q.weight": sd[f"{c}q_proj.weight"],
        "attn.to_kv.weight": torch.cat([sd[f"{c}k_proj.weight"], sd[f"{c}v_proj.weight"]]),
        "attn.to_out.weight": sd[f"{c}o_proj.weight"],
        "attn_gate": sd["alpha_cross_attn"].reshape(-1),
        "ff.0.weight": sd["post_attention_layernorm.weight"],
        "ff.1.weight": torch.cat([sd["mlp.gate_proj.weight"], sd["mlp.up_proj.weight"]]),
        "ff.3.weight": sd["mlp.down_proj.weight"],
        "ff_gate": sd["alpha_dense"].reshape(-1),
    }


def mutate(**changes):
    def wrong(sd):
        out = key_solution(sd)
        for key, f in changes.items():
            out[key] = f(sd, out)
        return out
    return wrong


def test_the_key_map_stub_fails_saying_it_is_not_written():
    fails(lesson11.check_from_idefics_keys, stub, match="not written yet")


def test_the_key_map_solution_passes(capsys):
    got = lesson11.check_from_idefics_keys(key_solution)
    assert got["attn_gate"].shape == (lesson11.DIM,)
    assert capsys.readouterr().out.startswith("OK")


@pytest.mark.parametrize("wrong,match", [
    (mutate(**{"attn.to_kv.weight": lambda sd, o: torch.cat([sd["cross_attn.v_proj.weight"],
                                                             sd["cross_attn.k_proj.weight"]])}), "values first"),
    (mutate(**{"ff.1.weight": lambda sd, o: torch.cat([sd["mlp.up_proj.weight"], sd["mlp.gate_proj.weight"]])}),
     "`up_proj` first"),
    (mutate(**{"attn.norm.weight": lambda sd, o: sd["post_attention_layernorm.weight"],
               "ff.0.weight": lambda sd, o: sd["input_layernorm.weight"]}), "norms are swapped"),
    (mutate(attn_gate=lambda sd, o: sd["alpha_dense"].reshape(-1), ff_gate=lambda sd, o: sd["alpha_cross_attn"].reshape(-1)),
     "gates are swapped"),
    (mutate(attn_gate=lambda sd, o: sd["alpha_cross_attn"]), r"reshape\(-1\)"),
    (mutate(**{"attn.to_kv.weight": lambda sd, o: sd["cross_attn.k_proj.weight"]}), "along dim 0"),
    (mutate(**{"attn.to_q.weight": lambda sd, o: sd["cross_attn.o_proj.weight"]}), "no usual mistake matches"),
    (mutate(**{"attn.to_q.weight": lambda sd, o: sd["cross_attn.k_proj.weight"]}),
     r"'attn\.to_q\.weight' has shape .*check which IDEFICS tensor the table maps to it"),
])
def test_each_key_map_mistake_is_named(wrong, match):
    fails(lesson11.check_from_idefics_keys, wrong, match=match)


def test_missing_and_unknown_keys_are_named():
    fails(lesson11.check_from_idefics_keys, lambda sd: {k: v for k, v in key_solution(sd).items() if k != "ff.3.weight"},
          match="has no 'ff.3.weight'")
    fails(lesson11.check_from_idefics_keys, lambda sd: dict(key_solution(sd), **{"mlp.up_proj.weight": sd["mlp.up_proj.weight"]}),
          match="'mlp.up_proj.weight', which a flamingo_lite")
    fails(lesson11.check_from_idefics_keys, lambda sd: list(sd), match="return a dict")


def test_the_key_map_hint_exists(capsys):
    hint("11.keys", 2)
    assert "torch.cat([k_proj, v_proj])" in capsys.readouterr().out


def test_a_conversion_that_empties_the_given_state_dict_is_named():
    def pops(sd):
        out = key_solution(sd)
        sd.pop("cross_attn.q_proj.weight")  # the right dict, and the caller's loses a key
        return out

    fails(lesson11.check_from_idefics_keys, pops, match=r"changed the state_dict it was given \(`sd\.pop\(\.\.\.\)`")


def test_gates_that_only_fit_per_channel_are_named_on_scalar_gates():
    """`.squeeze()` makes (1, 1, d) gates (d,), right, and scalar (1,) gates 0-d; indexing or a width typed in
    raises."""
    squeezed = mutate(attn_gate=lambda sd, o: sd["alpha_cross_attn"].squeeze(),
                      ff_gate=lambda sd, o: sd["alpha_dense"].squeeze())
    fails(lesson11.check_from_idefics_keys, squeezed, match=r"on a layer with scalar gates: 'attn_gate' has shape \(\), "
          r"expected \(1,\); a scalar gate is \(1,\) in IDEFICS and in flamingo_lite, and `\.squeeze\(\)` drops")
    fails(lesson11.check_from_idefics_keys, mutate(attn_gate=lambda sd, o: sd["alpha_cross_attn"][0, 0]),
          match=r"scalar gates raised IndexError: too many indices .*; a scalar gate is \(1,\), with one axis")
    fails(lesson11.check_from_idefics_keys, mutate(ff_gate=lambda sd, o: sd["alpha_dense"].reshape(lesson11.DIM)),
          match=r"scalar gates raised RuntimeError: .*; a scalar gate is \(1,\), one number")
