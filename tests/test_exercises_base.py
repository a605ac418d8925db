"""The pieces lesson checks are built from: check_layer names a known mistake, passes the right module, and leaves
the learner's module as it was."""
import pytest
import torch

import flamingo_lite as fl
from flamingo_lite.teaching.exercises import (ExerciseFailed, Mistake, check_layer, check_parameter_names, compare,
                                              hint, register_hints, run_learner)




def test_check_layer_passes_the_reference_itself(capsys):
    check_layer(fl.PerceiverAttention(dim=16, dim_head=4, heads=2), fl.PerceiverAttention, what="your layer")
    assert capsys.readouterr().out.startswith("OK: your layer matches the reference")


def test_check_layer_names_the_mistake_the_output_matches():
    class Doubled(fl.PerceiverAttention):
        def forward(self, x, latents):
            return 2 * super().forward(x, latents)

    def mistakes(reference, x, latents):
        return [Mistake("doubled", 2 * reference(x, latents), "the output is twice the answer: look at the return.")]

    with pytest.raises(ExerciseFailed, match="^your layer: the output is twice the answer"):
        check_layer(Doubled(dim=16, dim_head=4, heads=2), fl.PerceiverAttention, what="your layer", mistakes=mistakes)
    with pytest.raises(ExerciseFailed, match="differs from flamingo_lite.PerceiverAttention"):
        check_layer(Doubled(dim=16, dim_head=4, heads=2), fl.PerceiverAttention, what="your layer")


def test_check_layer_on_a_stub_says_it_is_not_written_yet():
    class Stub(fl.PerceiverAttention):
        def forward(self, x, latents):
            raise NotImplementedError("Your turn")

    with pytest.raises(ExerciseFailed, match="Stub is not written yet"):
        check_layer(Stub(dim=16, dim_head=4, heads=2), fl.PerceiverAttention, what="your layer")


def test_run_learner_compare_and_hints():
    def stub():
        raise NotImplementedError

    with pytest.raises(ExerciseFailed, match="not written yet"):
        run_learner(stub, what="your f()")
    with pytest.raises(ExerciseFailed, match="raised ZeroDivisionError"):
        run_learner(lambda: 1 / 0, what="your f()")
    want = torch.tensor([1.0, 0.0])
    compare(want.clone(), want, what="f")
    with pytest.raises(ExerciseFailed, match="^f: named"):
        compare(torch.tensor([0.5, 0.5]), want, what="f", mistakes=[Mistake("m", torch.tensor([0.5, 0.5]), "named")])
    with pytest.raises(ExerciseFailed, match="NaN where the answer has a number"):
        compare(torch.tensor([1.0, float("nan")]), want, what="f")
    register_hints({"99.test": "look here"})
    hint("99.test")
    with pytest.raises(KeyError, match="99.test"):
        hint("99.nope")


def test_a_failed_check_shows_one_line_in_jupyter_not_a_traceback():
    error = ExerciseFailed("your f() is not written yet.")
    assert error._render_traceback_() == ["✗ your f() is not written yet."]


def test_check_layer_names_what_a_forward_match_cannot_see():
    class DetachedQueries(fl.PerceiverAttention):
        def project(self, x, latents):
            q, k, v = super().project(x, latents)  # (b*t, h, L, e), 2 x (b*t, h, n+L, e)
            return q.detach(), k, v

    with pytest.raises(ExerciseFailed, match=r"^your layer: DetachedQueries: parameter to_q.weight gets no gradient") as failed:
        check_layer(DetachedQueries(dim=16, dim_head=4, heads=2), fl.PerceiverAttention, what="your layer")
    assert "no usual mistake matches" not in str(failed.value)


def test_check_layer_names_a_known_mistake_on_the_case_where_it_shows():
    class NoZeroRows(fl.MaskedCrossAttention):
        """Right while every row has a marker; a row without any gets the average of every media."""

        def forward(self, x, media, media_locations=None):
            if media_locations is not None and not bool(media_locations.any(dim=-1).all()):
                return super().forward(x, media, None)
            return super().forward(x, media, media_locations)

    def mistakes(reference, x, media, media_locations=None):
        return [Mistake("mask ignored", reference(x, media, None), "every word sees every image.")]

    with pytest.raises(ExerciseFailed, match="^your layer is right on the example but not on a row with no marker at "
                                             "all: every word sees every image.$"):
        check_layer(NoZeroRows(dim=16, dim_head=4, heads=2), fl.MaskedCrossAttention, what="your layer", mistakes=mistakes)


def test_every_lessons_checks_leave_the_global_random_state_as_they_found_it():
    """A check draws weights and inputs; the lesson's later cells must draw the same numbers whether it ran, failed
    early or changed (lesson 06 printed other numbers than its prose until its checks were forked)."""
    import importlib

    import torch

    from flamingo_lite.teaching.exercises import ExerciseFailed, keep_rng

    for n in range(1, 14):  # lessons 10-13 record their verdicts only (record_verdicts), for failed_checks
        module = importlib.import_module(f"flamingo_lite.teaching.exercises.lesson{n:02d}")
        checks = [v for k, v in vars(module).items() if k.startswith("check_") and callable(v) and v.__module__ == module.__name__]
        assert checks and all(hasattr(c, "__wrapped__") for c in checks), module.__name__
    namespace = {"__name__": "a_lesson"}

    def check_draws(fail):
        torch.manual_seed(123)
        torch.randn(5)
        if fail:
            raise ExerciseFailed("wrong")

    check_draws.__module__ = "a_lesson"
    namespace["check_draws"] = check_draws
    keep_rng(namespace)
    torch.manual_seed(0)
    state = torch.random.get_rng_state()
    namespace["check_draws"](False)
    assert torch.equal(torch.random.get_rng_state(), state)
    with pytest.raises(ExerciseFailed, match="wrong"):
        namespace["check_draws"](True)
    assert torch.equal(torch.random.get_rng_state(), state)


def test_failed_checks_names_the_checks_whose_last_run_failed():
    """A lesson's last cell asserts `failed_checks(lesson)` is empty: a check that failed is listed until it passes,
    and a check run inside another is judged with it, not on its own."""
    import types

    from flamingo_lite.teaching.exercises import failed_checks, keep_rng

    lesson = types.ModuleType("a_lesson_module")
    namespace = vars(lesson)

    def check_inner(ok):
        if not ok:
            raise ExerciseFailed("inner wrong")

    def check_outer(ok):
        try:
            check_inner(False)  # a check trying a variant that fails, as a check may
        except ExerciseFailed:
            pass
        if not ok:
            raise ExerciseFailed("outer wrong")

    for check in (check_inner, check_outer):
        check.__module__ = "a_lesson_module"
        namespace[check.__name__] = check
    keep_rng(namespace)
    assert failed_checks(lesson) == []
    with pytest.raises(ExerciseFailed):
        namespace["check_outer"](False)
    assert failed_checks(lesson) == ["check_outer"]  # the inner check's failure inside it is not the learner's
    with pytest.raises(ExerciseFailed):
        namespace["check_inner"](False)
    assert failed_checks(lesson) == ["check_inner", "check_outer"]
    namespace["check_outer"](True)
    assert failed_checks(lesson) == ["check_inner"]  # passed now, so no longer listed
    namespace["check_inner"](True)
    assert failed_checks(lesson) == []
    assert failed_checks(types.ModuleType("another_lesson")) == []


def test_needs_stops_a_cell_whose_code_failed_its_check_or_was_never_checked():
    """`needs(check)` stops a cell in one line when `check` failed, and when it has not run in the kernel (a stub
    whose check cell was skipped would raise NotImplementedError from deep inside the cell)."""
    import types

    from flamingo_lite.teaching.exercises import keep_rng, needs

    lesson = types.ModuleType("a_needing_lesson")

    def check_part(ok):
        if not ok:
            raise ExerciseFailed("part wrong")

    check_part.__module__ = "a_needing_lesson"
    vars(lesson)["check_part"] = check_part
    keep_rng(vars(lesson))
    check = vars(lesson)["check_part"]
    with pytest.raises(ExerciseFailed, match=r"this cell builds on your code that check_part has not checked yet in this "
                                             r"kernel: run the exercise and its check cell"):
        needs(check)
    with pytest.raises(ExerciseFailed, match=r"check_part, check_part have not checked yet"):  # two checks: plural
        needs(check, check)
    with pytest.raises(ExerciseFailed):
        check(False)
    with pytest.raises(ExerciseFailed, match=r"your code that check_part found wrong above"):
        needs(check)
    check(True)
    needs(check)  # passed: the cell runs


@pytest.mark.parametrize("number", range(1, 14))
def test_every_lessons_failed_check_is_seen_by_its_last_cell(number):
    """Each lesson's last cell asserts failed_checks(lessonNN) is empty: a stub fed to any check of the lesson must
    show there (lesson 10's checks were not recorded, so its last cell passed with every exercise failing)."""
    import importlib
    import inspect

    from flamingo_lite.teaching.exercises import failed_checks

    module = importlib.import_module(f"flamingo_lite.teaching.exercises.lesson{number:02d}")
    name, check = next((k, v) for k, v in sorted(vars(module).items()) if k.startswith("check_") and callable(v)
                       and v.__module__ == module.__name__)
    arguments = [None] * len(inspect.signature(check).parameters.values())
    try:
        check(*arguments)  # nonsense in: the check fails (or raises) and its verdict is kept
    except Exception:
        pass
    assert name in failed_checks(module), f"lesson {number:02d}: {name} failed, and failed_checks does not say so"


# The package's own answer handed in as the learner's: each way of reaching it is named.
from flamingo_lite import masks as package_masks  # noqa: E402
from flamingo_lite.masks import text_time as imported_text_time  # noqa: E402
from flamingo_lite.teaching.exercises import lesson03, lesson04, lesson08, lesson09, refuse_the_answer  # noqa: E402
from flamingo_lite.tiny import training  # noqa: E402
from flamingo_lite.tiny.model import Flamingo, FlamingoConfig  # noqa: E402


def through_the_module(media_locations):
    return package_masks.text_time(media_locations)  # (b, n)


def by_an_imported_name(media_locations):
    return imported_text_time(media_locations)  # (b, n)


def imported_inside(media_locations):
    import flamingo_lite.masks

    return flamingo_lite.masks.text_time(media_locations)  # (b, n)


def in_a_nested_function(media_locations):
    def count(loc):
        return fl.masks.text_time(loc)  # (b, n)

    return count(media_locations)


def own_text_time(media_locations):
    return media_locations.long().cumsum(dim=-1)  # (b, n)


@pytest.mark.parametrize("learner", [through_the_module, by_an_imported_name, imported_inside, in_a_nested_function])
def test_04_the_packages_text_time_is_named_however_it_is_reached(learner):
    with pytest.raises(ExerciseFailed, match=f"your {learner.__name__} calls flamingo_lite.masks.text_time, the "
                                             "package's own answer"):
        lesson04.check_text_time(learner)
    lesson04.check_text_time(own_text_time)  # the learner's own passes


def test_a_closure_over_the_answer_is_named():
    answer = package_masks.text_time

    def wrapped(media_locations):
        return answer(media_locations)  # (b, n)

    with pytest.raises(ExerciseFailed, match="calls flamingo_lite.masks.text_time"):
        refuse_the_answer(wrapped, (package_masks.text_time,))
    refuse_the_answer(own_text_time, (package_masks.text_time,))


def test_03_a_subclass_of_the_packages_resampler_is_named():
    class MyPerceiverResampler(fl.PerceiverResampler):
        pass

    with pytest.raises(ExerciseFailed, match="your MyPerceiverResampler subclasses flamingo_lite.perceiver.PerceiverResampler"):
        lesson03.check_forward(MyPerceiverResampler)


def test_08_a_subclass_of_the_packages_flamingo_is_named():
    class MyFlamingo(Flamingo):
        def __init__(self, config, *, lm, vision):
            super().__init__(config, lm=lm, vision=vision)

    with pytest.raises(ExerciseFailed, match="your MyFlamingo subclasses flamingo_lite.tiny.model.Flamingo"):
        lesson08.check_flamingo_class(MyFlamingo, FlamingoConfig())


def test_09_the_packages_loss_is_named():
    def next_token_loss(logits, tokens, pad_id=0):
        return training.next_token_loss(logits, tokens, pad_id)  # ()

    with pytest.raises(ExerciseFailed, match="calls flamingo_lite.tiny.training.next_token_loss"):
        lesson09.check_loss(next_token_loss)


def test_compare_says_how_a_result_stopped_being_a_tensor():
    import numpy as np

    want = torch.ones(3)
    with pytest.raises(ExerciseFailed, match=r"returned a float, not a tensor: keep it a tensor: float\(\.\.\.\), \.item\(\)"):
        compare(3.0, want, what="your f")
    with pytest.raises(ExerciseFailed, match=r"returned a ndarray, not a tensor: stay in torch: \.numpy\(\)"):
        compare(np.ones(3), want, what="your f")
    with pytest.raises(ExerciseFailed, match=r"returned a NoneType, not a tensor: return the result, do not print it"):
        compare(None, want, what="your f")


def test_check_parameter_names_says_what_is_missing_extra_or_misshaped():
    reference = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Linear(3, 2))  # 0.weight, 0.bias, 1.weight, 1.bias
    check_parameter_names(torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Linear(3, 2)), reference, what="your net")
    no_bias = torch.nn.Sequential(torch.nn.Linear(4, 3, bias=False), torch.nn.Linear(3, 2, bias=False))
    with pytest.raises(ExerciseFailed, match=r"^your net's parameters are not the reference's \(0, 1\): missing "
                                             r"0\.bias, 1\.bias\.$"):
        check_parameter_names(no_bias, reference, what="your net", parts="0, 1")
    with pytest.raises(ExerciseFailed, match=r"^your net's parameters are not the reference's: missing 0\.bias and 1 "
                                             r"more\. Add the biases\.$"):
        check_parameter_names(no_bias, reference, what="your net", most=1, fix="Add the biases.")
    wider = torch.nn.Sequential(torch.nn.Linear(4, 5), torch.nn.Linear(5, 2), torch.nn.Linear(2, 2))
    with pytest.raises(ExerciseFailed, match=r"not in the reference 2\.bias, 2\.weight; 0\.weight is \(5, 4\), not "
                                             r"\(3, 4\); 0\.bias is \(5,\), not \(3,\); 1\.weight is \(2, 5\), "
                                             r"not \(2, 3\)\.$"):
        check_parameter_names(wider, reference, what="your net", shapes=True)
    check_parameter_names(wider[:2], reference, what="your net")  # the same names: shapes are left to check_shapes_follow
