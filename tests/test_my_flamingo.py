"""The learner's own file, `my_flamingo.py`, and the course's, `notebooks/my_flamingo.py`.

* The committed file is what `tools/make_my_flamingo.py` makes from the lessons' `%%my_flamingo` cells, and
  writing those cells again, as running the solution lessons does, leaves it byte for byte as it is.
* It imports on its own, with torch and einops only (no flamingo_lite), and its modules are flamingo_lite's and
  flamingo-pytorch 0.1.2's layers: the same weights load by name and give the same outputs.
* The magic: it runs the cell, writes its section, replaces a re-run cell's section in place, appends a new one,
  and writes nothing when the cell raises.
"""
from __future__ import annotations

import ast
import copy
import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import flamingo_lite as fl
from flamingo_lite import masks
from flamingo_lite.teaching import my_file
from flamingo_lite.teaching.checker import check_module
from flamingo_lite.teaching import exercises
from flamingo_lite.teaching.exercises import ExerciseFailed

ROOT = Path(__file__).resolve().parent.parent
FILE = ROOT / "notebooks" / "my_flamingo.py"
_spec = importlib.util.spec_from_file_location("make_my_flamingo", ROOT / "tools" / "make_my_flamingo.py")
tool = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(tool)

WHOLE_MODULES = ["MyPerceiverAttention", "MyFeedForward", "MyPerceiverResampler", "MyMaskedCrossAttention",
                 "MyGatedCrossAttentionBlock", "MyFlamingo"]


@pytest.fixture(scope="module")
def mine():
    """notebooks/my_flamingo.py, imported as a module of its own."""
    spec = importlib.util.spec_from_file_location("my_flamingo_under_test", FILE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ----------------------------------------------------------------------------------------------------- in sync

def test_the_committed_file_is_what_the_tool_makes(capsys):
    assert FILE.read_text(encoding="utf-8") == tool.assemble(), f"notebooks/my_flamingo.py is out of date: run {tool.COMMAND}"
    assert tool.main(["--check"]) == 0
    assert "is up to date" in capsys.readouterr().out


def test_running_the_solution_lessons_leaves_the_file_byte_for_byte(tmp_path):
    """Every %%my_flamingo cell recorded again, lesson by lesson, as the magic does when a lesson runs."""
    copy = tmp_path / "my_flamingo.py"
    copy.write_bytes(FILE.read_bytes())
    cells = 0
    for lesson in sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb")):
        for body in tool.magic_cells(lesson):
            my_file.record(lesson.name[:2], body, copy)
            cells += 1
            assert copy.read_bytes() == FILE.read_bytes(), f"{lesson.name}: a %%my_flamingo cell changed the file"
    assert cells >= 10


def test_the_lessons_mark_every_cell_the_model_needs():
    sections = my_file.parse(FILE.read_text(encoding="utf-8"))
    names = [n for s in sections for n in s.names]
    for name in WHOLE_MODULES + ["project", "attend_latents", "add_time_embeddings", "resampler_layers",
                                 "my_text_time", "my_text_to_media_mask", "my_cross_attention_mask", "masked_softmax",
                                 "xattn_layer_indices", "next_token_loss", "freeze_pretrained", "parameter_groups",
                                 "train_flamingo", "greedy_decode"]:
        assert names.count(name) == 1, f"{name} is defined {names.count(name)} times in my_flamingo.py"
    assert [s.lesson for s in sections] == sorted(s.lesson for s in sections)
    assert "### BEGIN SOLUTION" not in FILE.read_text() and "NotImplementedError" not in FILE.read_text()


def test_the_check_mode_says_when_the_file_is_stale(tmp_path, monkeypatch, capsys):
    stale = tmp_path / "my_flamingo.py"
    stale.write_text(FILE.read_text().replace("class MyFeedForward", "class TheirFeedForward"))
    monkeypatch.setattr(tool, "TARGET", stale)
    assert tool.main(["--check"]) == 1
    assert "out of date" in capsys.readouterr().out
    assert tool.main([]) == 0 and stale.read_text() == FILE.read_text()


# -------------------------------------------------------------------------------------------------- standalone

def test_it_imports_only_torch_einops_and_math():
    tree = ast.parse(FILE.read_text(encoding="utf-8"))
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            imported.add((node.module or "").split(".")[0])
    assert imported == {"math", "torch", "einops"}, imported
    assert "flamingo_lite" not in FILE.read_text(encoding="utf-8").split('"""', 2)[2]  # not even by name


def test_it_imports_in_a_python_without_flamingo_lite(tmp_path):
    (tmp_path / "my_flamingo.py").write_bytes(FILE.read_bytes())
    code = ("import sys; sys.modules['flamingo_lite'] = None; import my_flamingo as m; "
            "print(sorted(n for n in vars(m) if n.startswith('My')))")
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == str(sorted(WHOLE_MODULES))


# ---------------------------------------------------------------------------------------------- the same layers

@pytest.mark.parametrize("cfg", [dict(dim=16, dim_head=4, heads=2), dict(dim=24, dim_head=8, heads=3)])
def test_the_attention_layers_are_flamingo_lites(mine, cfg):
    assert check_module(mine.MyPerceiverAttention(**cfg), fl.PerceiverAttention, verbose=False).passed
    for mode in (True, False):
        layer = mine.MyMaskedCrossAttention(**cfg, only_attend_immediate_media=mode)
        assert check_module(layer, fl.MaskedCrossAttention, verbose=False).passed


@pytest.mark.parametrize("dim, mult", [(16, 4), (12, 2.5)])
def test_the_feedforward_is_flamingo_lites(mine, dim, mult):
    layer = mine.MyFeedForward(dim, mult=mult)
    assert list(layer.state_dict()) == list(fl.FeedForward(dim, mult=mult).state_dict())
    assert check_module(layer, fl.FeedForward, (torch.randn(2, 3, dim),), verbose=False).passed


@pytest.mark.parametrize("cfg", [dict(dim=16, depth=2, dim_head=4, heads=2, num_latents=3),
                                 dict(dim=24, depth=1, dim_head=8, heads=3, num_latents=5, num_media_embeds=2, ff_mult=2)])
def test_the_resampler_and_block_are_flamingo_lites(mine, cfg):
    assert check_module(mine.MyPerceiverResampler(**cfg), fl.PerceiverResampler, verbose=False).passed
    without = mine.MyPerceiverResampler(**cfg, media_embedding="none")
    assert "media_pos_emb" not in without.state_dict()
    result = check_module(without, fl.PerceiverResampler(**cfg, media_embedding="none"), verbose=False)
    assert result.passed, result.message
    with pytest.raises(ValueError, match="media_embedding"):
        mine.MyPerceiverResampler(**cfg, media_embedding="per_image")
    block_cfg = dict(dim=cfg["dim"], dim_head=cfg["dim_head"], heads=cfg["heads"], ff_mult=cfg.get("ff_mult", 4))
    for mode in (True, False):
        block = mine.MyGatedCrossAttentionBlock(**block_cfg, only_attend_immediate_media=mode)
        assert check_module(block, fl.GatedCrossAttentionBlock, verbose=False).passed  # gates opened to 0.5


def test_the_mask_is_flamingo_lites(mine):
    for tokens in ("a photo of <image> a red circle <image> a blue square", "<image> <image> x y <image> z"):
        loc = masks.media_locations_from_tokens(tokens.split()).unsqueeze(0)  # (1, n)
        t = int(loc.sum())
        for mode in (True, False):
            assert torch.equal(mine.my_cross_attention_mask(loc, t, 3, mode), masks.cross_attention_mask(loc, t, 3, mode))


def _opened(module):
    with torch.no_grad():
        for name, p in module.named_parameters():
            if name.endswith("gate"):
                p.fill_(0.6)
    return module


@pytest.mark.parametrize("cfg", [dict(dim=16, depth=2, dim_head=4, heads=2, num_latents=3),
                                 dict(dim=24, depth=1, dim_head=8, heads=3, num_latents=5, num_media_embeds=3, ff_mult=2)])
def test_flamingo_pytorch_weights_load_and_give_the_same_outputs(mine, cfg):
    flamingo_pytorch = pytest.importorskip("flamingo_pytorch")
    torch.manual_seed(0)
    theirs = flamingo_pytorch.PerceiverResampler(**cfg).eval()
    ours = mine.MyPerceiverResampler(**cfg).eval()
    ours.load_state_dict(theirs.state_dict(), strict=True)
    x = torch.randn(2, 2, 7, cfg["dim"])  # (b, t, n, d)
    with torch.no_grad():
        assert torch.allclose(ours(x), theirs(x), atol=1e-5)
        assert torch.allclose(ours(x[:, 0]), theirs(x[:, 0]), atol=1e-5)  # (b, n, d): one media

    block_cfg = dict(dim=cfg["dim"], dim_head=cfg["dim_head"], heads=cfg["heads"], ff_mult=cfg.get("ff_mult", 4))
    tokens = "a photo of <image> a red circle <image> a blue square".split()
    loc = masks.media_locations_from_tokens(tokens).unsqueeze(0)  # (1, n)
    text = torch.randn(1, len(tokens), cfg["dim"])  # (b, n, d)
    media = torch.randn(1, 2, 3, cfg["dim"])  # (b, t, m, d)
    # flamingo-pytorch's all-previous mode leaks later images into the text before the first one (lesson 04), so
    # that mode is compared on text that starts with an image.
    for mode, cut in ((True, 0), (False, 3)):
        theirs = _opened(flamingo_pytorch.GatedCrossAttentionBlock(**block_cfg, only_attend_immediate_media=mode)).eval()
        ours = mine.MyGatedCrossAttentionBlock(**block_cfg, only_attend_immediate_media=mode).eval()
        ours.load_state_dict(theirs.state_dict(), strict=True)
        with torch.no_grad():
            got, want = ours(text[:, cut:], media, loc[:, cut:]), theirs(text[:, cut:], media, loc[:, cut:])
        assert torch.allclose(got, want, atol=1e-5) and not torch.allclose(got, text[:, cut:])


# --------------------------------------------------------------------------------------------------- the magic

@pytest.fixture
def shell(tmp_path, monkeypatch):
    from IPython.core.interactiveshell import InteractiveShell

    monkeypatch.setenv(my_file.ENV_VAR, str(tmp_path / "mine.py"))
    ip = InteractiveShell.instance()
    my_file.start("02", ip.user_ns)
    return ip


def test_the_magic_runs_the_cell_and_writes_its_section(shell, tmp_path):
    result = shell.run_cell("%%my_flamingo\ndef double(x):\n    ### BEGIN SOLUTION\n    return 2 * x  # twice\n    ### END SOLUTION")
    assert result.success and shell.user_ns["double"](3) == 6  # it ran, in the notebook's namespace
    text = (tmp_path / "mine.py").read_text()
    assert text == my_file.PREAMBLE + "\n\n# === lesson 02: double ===\ndef double(x):\n    return 2 * x  # twice\n"


def test_a_rerun_replaces_in_place_and_a_new_cell_is_appended(shell, tmp_path):
    path = tmp_path / "mine.py"
    assert shell.run_cell("%%my_flamingo\ndef first():\n    return 1").success
    assert shell.run_cell("%%my_flamingo\nclass Second:\n    pass").success
    assert shell.run_cell("%%my_flamingo\ndef first():\n    return 11").success  # the first cell, edited
    sections = my_file.parse(path.read_text())
    assert [(s.lesson, s.names, s.body) for s in sections] == [
        ("02", ("first",), "def first():\n    return 11"), ("02", ("Second",), "class Second:\n    pass")]
    my_file.start("03", shell.user_ns)
    assert shell.run_cell("%%my_flamingo\ndef first():\n    return 3").success  # lesson 03's own `first`
    assert [s.lesson for s in my_file.parse(path.read_text())] == ["02", "02", "03"]


def test_a_cell_that_raises_writes_nothing(shell, tmp_path):
    path = tmp_path / "mine.py"
    assert shell.run_cell("%%my_flamingo\ndef kept():\n    return 1").success
    before = path.read_bytes()
    result = shell.run_cell("%%my_flamingo\ndef kept():\n    return 2\nraise ValueError('my bug')")
    assert not result.success and isinstance(result.error_in_exec, ValueError)
    assert path.read_bytes() == before
    result = shell.run_cell("%%my_flamingo\ndef broken(:\n    pass")
    assert not result.success and path.read_bytes() == before


def test_the_file_is_written_atomically(shell, tmp_path, monkeypatch):
    written = []
    monkeypatch.setattr(my_file, "write_text_atomic", lambda path, text: written.append((Path(path), text)))
    assert shell.run_cell("%%my_flamingo\nx = 1").success
    assert written and written[0][0] == tmp_path / "mine.py" and written[0][1].startswith(my_file.PREAMBLE)


def test_start_loads_the_earlier_lessons_or_says_what_stands_in(tmp_path, capsys):
    path = tmp_path / "mine.py"
    ns = {}
    lines = my_file.load_earlier("03", ns, path=path, needs=["MyPerceiverAttention"])
    assert ns["MyPerceiverAttention"] is fl.PerceiverAttention
    assert lines == ["mine.py has no MyPerceiverAttention yet: using flamingo_lite.PerceiverAttention in its place"]
    path.write_bytes(FILE.read_bytes())
    ns = {}
    lines = my_file.load_earlier("05", ns, path=path, needs=["my_cross_attention_mask"])
    assert "MyMaskedCrossAttention" not in ns and "MyPerceiverResampler" in ns  # lessons before 05 only
    assert ns["my_cross_attention_mask"].__module__ != "flamingo_lite.masks"
    assert lines[-1] == "from your mine.py, lesson 04: my_text_time, my_text_to_media_mask, my_cross_attention_mask"
    assert my_file.load_earlier("04", {}, path=path) == []  # a lesson that needs nothing loads nothing


def test_what_an_earlier_section_calls_stands_in_when_the_file_lacks_it(tmp_path):
    """A learner who skipped lesson 04: lesson 05's layer calls my_cross_attention_mask, so lesson 06 gets the package's."""
    path = tmp_path / "my_flamingo.py"
    for body in tool.magic_cells(ROOT / "notebooks" / "05_masked_cross_attention.ipynb"):
        my_file.record("05", body, path)
    ns = {}
    lines = my_file.load_earlier("06", ns, path=path, needs=["MyMaskedCrossAttention", "MyFeedForward"])
    assert ns["my_cross_attention_mask"] is masks.cross_attention_mask
    assert ("my_flamingo.py has no my_cross_attention_mask yet: using flamingo_lite.masks.cross_attention_mask in its place, "
            "for your lesson 05 code, which calls it") in lines  # not this lesson's name: whose code needs it is said
    layer = ns["MyMaskedCrossAttention"](dim=16, dim_head=8, heads=2)
    tokens = "<image> a red circle".split()
    loc = masks.media_locations_from_tokens(tokens)[None]
    assert layer(torch.randn(1, 4, 16), torch.randn(1, 1, 3, 16), loc).shape == (1, 4, 16)  # no NameError


def test_an_earlier_module_still_a_stub_is_replaced_and_said_so(tmp_path):
    """A learner who ran the student cell of lesson 02 without writing it: lesson 03 uses flamingo_lite's layer."""
    gen_spec = importlib.util.spec_from_file_location("make_student_notebooks", ROOT / "tools" / "make_student_notebooks.py")
    gen = importlib.util.module_from_spec(gen_spec)
    gen_spec.loader.exec_module(gen)
    assert gen.STUB.startswith(my_file.UNWRITTEN)  # the stub the student notebooks hold is the one looked for
    path = tmp_path / "my_flamingo.py"
    for body in tool.magic_cells(ROOT / "notebooks" / "02_perceiver_attention.ipynb"):
        my_file.record("02", gen.stub_source(body), path)
    ns = {}
    lines = my_file.load_earlier("03", ns, path=path, needs=["MyPerceiverAttention"])
    assert ns["MyPerceiverAttention"] is fl.PerceiverAttention
    assert lines[-1] == ("your MyPerceiverAttention in my_flamingo.py is not written yet (lesson 02): using "
                         "flamingo_lite.PerceiverAttention in its place")


def test_bad_input_is_a_clear_error():
    with pytest.raises(ValueError, match="lesson number"):
        my_file.start("lesson two", {})
    with pytest.raises(TypeError, match="must be a str"):
        my_file.clean_source(None)


def test_the_training_loop_is_flamingo_lites(mine, capsys):
    """Lesson 09's loop, from the file alone (its own loss, freezing and groups): train_flamingo's history."""
    from flamingo_lite.teaching.exercises import lesson09

    lesson09.check_train_loop(mine.train_flamingo)
    assert "train_flamingo is right" in capsys.readouterr().out
    for name in ("next_token_loss", "freeze_pretrained", "parameter_groups", "greedy_decode"):
        assert getattr(mine, name).__module__ == "my_flamingo_under_test", name


def test_lesson_08_takes_the_learners_resampler_and_block_or_says_what_stands_in(tmp_path):
    path = tmp_path / "mine.py"
    needs = ["MyPerceiverResampler", "MyGatedCrossAttentionBlock"]
    ns = {}
    lines = my_file.load_earlier("08", ns, path=path, needs=needs)
    assert ns["MyPerceiverResampler"] is fl.PerceiverResampler and ns["MyGatedCrossAttentionBlock"] is fl.GatedCrossAttentionBlock
    assert len(lines) == 2 and all("in its place" in line for line in lines)
    path.write_bytes(FILE.read_bytes())
    ns = {}
    my_file.load_earlier("08", ns, path=path, needs=needs)
    assert ns["MyPerceiverResampler"].__module__ != "flamingo_lite.perceiver"
    resampler = ns["MyPerceiverResampler"](dim=16, depth=1, dim_head=4, heads=2, num_latents=3, media_embedding="none")
    assert check_module(resampler, fl.PerceiverResampler(dim=16, depth=1, dim_head=4, heads=2, num_latents=3,
                                                         media_embedding="none"), verbose=False).passed


def test_the_files_own_flamingo_trains_as_flamingo_lites(mine):
    """Lesson 09 trains the file's MyFlamingo with the file's loop: from the same seed it starts from flamingo_lite's
    Flamingo's weights, and its history is training.train_flamingo's on flamingo_lite's model, number for number."""
    from flamingo_lite.tiny import data as shapes_data
    from flamingo_lite.tiny import training
    from flamingo_lite.tiny.language_model import TinyLM
    from flamingo_lite.tiny.model import Flamingo, FlamingoConfig, make_vision_encoder

    config = FlamingoConfig(dim=16, lm_heads=2, heads=2, dim_head=8, vision="random", resampler_depth=1, num_latents=4,
                            lm_depth=3, cross_attn_every=2)
    lm = TinyLM(config.lm_config())
    torch.manual_seed(5)
    theirs = Flamingo(config, lm=copy.deepcopy(lm))
    torch.manual_seed(5)
    ours = mine.MyFlamingo(config, lm=copy.deepcopy(lm), vision=make_vision_encoder(config))
    assert type(ours).__module__ == "my_flamingo_under_test" and ours.xattn_layers == theirs.xattn_layers == [0, 2]
    want, got = theirs.state_dict(), ours.state_dict()
    assert list(got) == list(want) and all(torch.equal(got[k], want[k]) for k in want)  # the same start
    data = shapes_data.make_dataset(24, seed=1)
    args = dict(steps=5, batch_size=8, lr=5e-3, gate_lr=5e-2, weight_decay=0.3, log_every=2, seed=3)
    history = mine.train_flamingo(ours, data, **args)
    reference = training.train_flamingo(theirs, data, **args, device="cpu", progress=False)
    # the same sums in another order (the file's layers are not the package's code): equal to float32 rounding
    close = lambda a, b, atol: torch.allclose(torch.tensor(a, dtype=torch.float64), torch.tensor(b, dtype=torch.float64), atol=atol, rtol=0)  # noqa: E731
    assert history["step"] == reference["step"] == [0, 2, 4, 5]
    assert history["loss_every_step"][0] == reference["loss_every_step"][0]  # gates at 0: exactly the language model
    assert close(history["loss_every_step"], reference["loss_every_step"], 1e-5)
    assert close(history["attn_gate_tanh"], reference["attn_gate_tanh"], 1e-5) and close(history["ff_gate_tanh"], reference["ff_gate_tanh"], 1e-5)
    assert all(abs(g) > 1e-3 for g in history["attn_gate_tanh"][-1])  # and they did train
    assert not any(p.requires_grad for p in [*ours.vision.parameters(), *ours.lm.parameters()])
    trained = ours.state_dict()
    assert all(torch.allclose(trained[k], v, atol=1e-4, rtol=0) for k, v in theirs.state_dict().items())  # the same end

# ------------------------------------------------------------------------------------------ a check that fails

CHECKS = """\
from flamingo_lite.teaching.exercises import ExerciseFailed
verdicts = {}  # name -> "fail" or "error"; a name not in it passes

def check_it(fn, *rest):
    verdict = verdicts.get(fn.__name__)
    if verdict == "fail":
        raise ExerciseFailed(f"{fn.__name__} is wrong")
    if verdict == "error":
        raise ValueError("the check could not run")
"""


def _marks(path):
    """{names: failed} of the file's sections."""
    return {s.names: s.failed for s in my_file.parse(path.read_text())}


@pytest.fixture
def checked(shell, tmp_path):
    """Lesson 05 started, two recorded cells (`first`, `second`), and a check whose verdict the test sets."""
    my_file.start("05", shell.user_ns)
    assert shell.run_cell(CHECKS).success
    assert shell.run_cell("%%my_flamingo\ndef first():\n    return 1").success
    assert shell.run_cell("%%my_flamingo\ndef second():\n    return 2").success
    return tmp_path / "mine.py"


def test_the_watcher_is_registered_once_per_shell(shell):
    my_file.start("05", shell.user_ns)
    my_file.register(shell)
    assert shell.events.callbacks["post_run_cell"].count(my_file._after_cell) == 1


def test_a_failing_check_marks_its_section_and_a_passing_one_clears_it(shell, checked):
    shell.user_ns["verdicts"]["first"] = "fail"
    result = shell.run_cell("check_it(first)")
    assert isinstance(result.error_in_exec, ExerciseFailed)
    assert _marks(checked) == {("first",): True, ("second",): False}
    assert f"# === lesson 05: first === {my_file.FAILED}\ndef first():" in checked.read_text()
    del shell.user_ns["verdicts"]["first"]
    assert shell.run_cell("check_it(first)").success
    assert _marks(checked) == {("first",): False, ("second",): False}


def test_only_the_bare_name_a_check_raised_on_is_marked(shell, checked):
    shell.user_ns["verdicts"]["first"] = "fail"
    assert not shell.run_cell("import types\nbox = types.SimpleNamespace(first=first)\n"
                              "check_it(box.first, second)").success  # first's check, not by its bare name
    assert _marks(checked) == {("first",): False, ("second",): False}
    # the checks before the one that raised passed, the ones after it did not run: only second is to blame
    shell.user_ns["verdicts"] = {"second": "fail"}
    assert not shell.run_cell("check_it(first)\nx = check_it(\n    second,\n)\ncheck_it(first)").success
    assert _marks(checked) == {("first",): False, ("second",): True}


def test_a_changed_cell_clears_the_mark_and_the_same_cell_keeps_it(shell, checked):
    shell.user_ns["verdicts"]["first"] = "fail"
    shell.run_cell("check_it(first)")
    assert shell.run_cell("%%my_flamingo\ndef first():\n    return 1").success  # the same code again
    assert _marks(checked)[("first",)] is True
    assert shell.run_cell("%%my_flamingo\ndef first():\n    return 11").success  # new code: not checked yet
    assert _marks(checked) == {("first",): False, ("second",): False}


def test_code_changed_after_its_check_passed_counts_as_unchecked_until_the_check_runs_again(shell):
    """A check passed, then its %%my_flamingo cell ran again with other code: the lesson's last cell and `needs`
    must not go on trusting the old verdict."""
    my_file.start("04", shell.user_ns)
    setup = ("from flamingo_lite.teaching.exercises import failed_checks, needs, lesson04\n"
             "mine = lambda: [f for f in failed_checks(lesson04) if f.startswith('check_text_time')]\n")  # other tests' verdicts aside
    right = "%%my_flamingo\ndef my_text_time(media_locations):\n    return media_locations.long().cumsum(dim=-1)"
    wrong = "%%my_flamingo\ndef my_text_time(media_locations):\n    return media_locations.long().cumsum(dim=0)"
    assert shell.run_cell(setup).success and shell.run_cell(right).success
    assert shell.run_cell("lesson04.check_text_time(my_text_time)").success
    assert shell.run_cell("assert not mine()").success
    assert shell.run_cell(right).success  # the same code again: the verdict still holds
    assert shell.run_cell("needs(lesson04.check_text_time)").success
    assert shell.run_cell(wrong).success  # new code, its check not run again
    stopped = shell.run_cell("needs(lesson04.check_text_time)")
    assert isinstance(stopped.error_in_exec, ExerciseFailed)
    assert "your my_text_time, changed since check_text_time last ran on it" in str(stopped.error_in_exec)
    assert shell.run_cell("failed = mine()").success
    assert shell.user_ns["failed"] == ["check_text_time, not run since your my_text_time changed"]
    assert not shell.run_cell("lesson04.check_text_time(my_text_time)").success  # the check, run again, fails it
    assert shell.run_cell("failed = mine()").success and shell.user_ns["failed"] == ["check_text_time"]
    assert shell.run_cell(right).success and shell.run_cell("lesson04.check_text_time(my_text_time)").success
    assert shell.run_cell("failed = mine()").success and shell.user_ns["failed"] == []


def test_a_plain_cell_redefined_after_its_check_passed_counts_as_unchecked(shell):
    """Lesson 01 writes no file: a function changed in a plain cell after its check passed is caught all the same."""
    right = ("def stable_softmax(s, dim=-1):\n    e = (s - s.amax(dim, keepdim=True)).exp()\n"
             "    return e / e.sum(dim, keepdim=True)")
    assert shell.run_cell("from flamingo_lite.teaching.exercises import failed_checks, lesson01\n"
                          "mine = lambda: [f for f in failed_checks(lesson01) if f.startswith('check_stable')]").success
    assert shell.run_cell(right).success and shell.run_cell("lesson01.check_stable_softmax(stable_softmax)").success
    assert shell.run_cell(right).success and shell.run_cell("failed = mine()").success  # the same code again
    assert shell.user_ns["failed"] == []
    assert shell.run_cell("def stable_softmax(s, dim=-1):\n    return s.exp() / s.exp().sum(dim, keepdim=True)").success
    assert shell.run_cell("failed = mine()").success
    assert shell.user_ns["failed"] == ["check_stable_softmax, not run since your stable_softmax changed"]


def test_another_error_or_a_cell_that_checks_nothing_leaves_the_marks(shell, checked):
    shell.user_ns["verdicts"]["first"] = "fail"
    shell.run_cell("check_it(first)")
    before = checked.read_bytes()
    shell.user_ns["verdicts"].update(first="error", second="error")
    assert isinstance(shell.run_cell("check_it(first)").error_in_exec, ValueError)
    assert isinstance(shell.run_cell("check_it(second)").error_in_exec, ValueError)
    assert isinstance(shell.run_cell("1 / 0\ncheck_it(first)").error_in_exec, ZeroDivisionError)
    assert not shell.run_cell("check_it(first").success  # a syntax error: nothing ran
    assert shell.run_cell("first()\nsecond()").success  # no check
    assert checked.read_bytes() == before


def test_a_check_of_another_lessons_name_marks_nothing(shell, checked):
    my_file.start("06", shell.user_ns)
    shell.user_ns["verdicts"]["first"] = "fail"
    before = checked.read_bytes()
    assert not shell.run_cell("check_it(first)").success  # `first` is lesson 05's, not this lesson's
    assert checked.read_bytes() == before


def test_the_watcher_never_raises_into_the_session(shell, checked, capsys):
    failed = ExerciseFailed("wrong")

    class Result:  # a cell whose source cannot be parsed, that raised ExerciseFailed
        error_in_exec, success = failed, False
        info = type("Info", (), {"raw_cell": "check_it(first"})()

    before = checked.read_bytes()
    assert my_file._after_cell(Result()) is None
    assert my_file._after_cell(None) is None  # not even a result
    assert checked.read_bytes() == before
    shell.user_ns["verdicts"]["first"] = "fail"
    checked.unlink()  # no file
    shell.run_cell("check_it(first)")
    assert not checked.exists()
    my_file._state["lesson"] = None  # no lesson started
    shell.run_cell("check_it(first)")
    assert not checked.exists() and "Error in callback" not in capsys.readouterr().out


def test_the_mark_round_trips_and_is_not_read_as_names():
    sections = [my_file.Section("04", ("a", "b"), "a = b = 1", failed=True),
                my_file.Section("05", (), "print(1)", failed=True), my_file.Section("05", (), "print(2)"),
                my_file.Section("05", ("c",), "c = 3")]
    text = my_file.render(sections)
    assert f"# === lesson 05: (no names) === {my_file.FAILED}\nprint(1)\n" in text
    assert "# === lesson 05: (no names) ===\nprint(2)\n" in text
    assert my_file.parse(text) == sections
    assert [(s.names, s.failed) for s in my_file.parse(text)] == [
        (("a", "b"), True), ((), True), ((), False), (("c",), False)]
    assert my_file.Section("05", ("c",), "c = 3") != my_file.Section("05", ("c",), "c = 3", failed=True)
    assert my_file.FAILED not in tool.assemble() and not any(s.failed for s in my_file.parse(tool.assemble()))
    # a section that calls a failed one says so in its header; the words are worked out again, never read as names
    calling = [my_file.Section("02", ("project",), "def project(x):\n    return x", failed=True),
               my_file.Section("02", ("Attention",), "class Attention:\n    f = project"),
               my_file.Section("02", ("other",), "projected = 1")]
    text = my_file.render(calling)
    assert ("# === lesson 02: Attention === (calls project, which failed its check: this section runs on it as it "
            "is)\n") in text and "# === lesson 02: other ===\n" in text
    assert my_file.parse(text) == calling and my_file.render(my_file.parse(text)) == text


def _lesson05_cell(name):
    """Lesson 05's %%my_flamingo cell that defines `name`."""
    cells = [b for b in tool.magic_cells(ROOT / "notebooks" / "05_masked_cross_attention.ipynb")
             if name in my_file.defined_names(my_file.clean_source(b))]
    assert len(cells) == 1
    return cells[0]


def test_a_later_lesson_uses_flamingo_lites_module_in_place_of_one_that_failed_its_check(shell, tmp_path, capsys):
    """Lesson 05's layer without its scale fails lesson 05's check, so lesson 06 builds on flamingo_lite's."""
    path = tmp_path / "mine.py"
    my_file.start("05", shell.user_ns, needs=["my_cross_attention_mask"])
    assert shell.run_cell("import torch\nfrom torch import nn\nfrom einops import rearrange\n"
                          "from flamingo_lite.teaching.exercises import lesson05").success
    assert shell.run_cell("%%my_flamingo\n" + _lesson05_cell("masked_softmax")).success
    right = _lesson05_cell("MyMaskedCrossAttention")
    assert " * self.scale  # (b, h, n, t*m)" in right
    wrong = right.replace(" * self.scale  # (b, h, n, t*m)", "  # (b, h, n, t*m)")
    assert shell.run_cell("%%my_flamingo\n" + wrong).success  # it runs
    result = shell.run_cell("lesson05.check_forward(MyMaskedCrossAttention)")
    assert isinstance(result.error_in_exec, ExerciseFailed) and "scale" in str(result.error_in_exec)
    assert _marks(path) == {("masked_softmax",): False, ("MyMaskedCrossAttention",): True}
    capsys.readouterr()

    ns = {}
    my_file.start("06", ns, needs=["MyMaskedCrossAttention", "MyFeedForward"])
    assert ns["MyMaskedCrossAttention"] is fl.MaskedCrossAttention
    assert ns["masked_softmax"].__code__.co_filename == "mine.py, lesson 05"  # the learner's: it passed
    printed = capsys.readouterr().out.splitlines()
    assert ("your MyMaskedCrossAttention failed lesson 05's check when you last ran it: using "
            "flamingo_lite.MaskedCrossAttention in its place (fix it in lesson 05 and run its check again)") in printed
    assert "from your mine.py, lesson 05: masked_softmax" in printed  # the stand-in's name is not listed as used from the file

    my_file.start("05", shell.user_ns, needs=["my_cross_attention_mask"])  # back to lesson 05: fixed, and checked
    assert shell.run_cell("%%my_flamingo\n" + right).success
    assert shell.run_cell("lesson05.check_forward(MyMaskedCrossAttention)").success
    assert _marks(path) == {("masked_softmax",): False, ("MyMaskedCrossAttention",): False}
    ns = {}
    lines = my_file.load_earlier("06", ns, path=path, needs=["MyMaskedCrossAttention", "MyFeedForward"])
    assert ns["MyMaskedCrossAttention"] is not fl.MaskedCrossAttention and not any("failed" in line for line in lines)


def test_a_failed_section_flamingo_lite_has_no_stand_in_for_is_used_as_it_is_and_said_so(tmp_path):
    path = tmp_path / "my_flamingo.py"
    my_file.record("05", _lesson05_cell("masked_softmax"), path)
    my_file.record("05", _lesson05_cell("MyMaskedCrossAttention"), path)
    changed = my_file.mark_checked("check(masked_softmax)", True, lesson="05", path=path)
    assert [s.names for s in changed] == [("masked_softmax",)]
    ns = {}
    lines = my_file.load_earlier("06", ns, path=path, needs=["MyMaskedCrossAttention", "MyFeedForward"])
    assert ns["masked_softmax"].__code__.co_filename == "my_flamingo.py, lesson 05"  # the learner's, from the file
    assert ("your masked_softmax failed lesson 05's check when you last ran it: used as it is, and your "
            "MyMaskedCrossAttention calls it (fix it in lesson 05 and run its check again)") in lines
    assert ns["MyMaskedCrossAttention"] is not fl.MaskedCrossAttention
    # the file read on its own says it too: the caller's header names what it calls that failed
    text = path.read_text(encoding="utf-8")
    assert ("# === lesson 05: MyMaskedCrossAttention === (calls masked_softmax, which failed its check: this section "
            "runs on it as it is)\n") in text
    assert "# === lesson 05: masked_softmax === " + my_file.FAILED + "\n" in text
    my_file.mark_checked("check(masked_softmax)", False, lesson="05", path=path)  # fixed: both headers clear
    assert "calls masked_softmax" not in path.read_text(encoding="utf-8")


def test_a_name_redefined_in_a_plain_cell_is_a_try_out_and_marks_nothing(shell, checked):
    shell.user_ns["verdicts"]["first"] = "fail"
    assert shell.run_cell("def first():\n    return 'a wrong version, tried out'").success  # not a %%my_flamingo cell
    assert isinstance(shell.run_cell("check_it(first)").error_in_exec, ExerciseFailed)
    assert _marks(checked) == {("first",): False, ("second",): False}  # the file's version was not the one checked
    assert shell.run_cell("%%my_flamingo\ndef first():\n    return 1").success  # the file's version, again
    assert isinstance(shell.run_cell("check_it(first)").error_in_exec, ExerciseFailed)
    assert _marks(checked) == {("first",): True, ("second",): False}


def test_a_stand_in_is_there_before_the_sections_that_use_it_run(tmp_path):
    """Lesson 08's cell starts `Resampler = MyPerceiverResampler`: with no lesson 03 in the file, the section must find
    the stand-in as it loads, not meet a NameError."""
    path = tmp_path / "my_flamingo.py"
    cell = FILE.read_text(encoding="utf-8").split("# === lesson 08: Resampler, GatedBlock, MyFlamingo ===\n")[1]
    cell = cell.split("\n# === ")[0]
    my_file.record("08", FILE.read_text(encoding="utf-8").split("# === lesson 08: xattn_layer_indices ===\n")[1].split("\n# === ")[0], path)
    my_file.record("08", cell, path)
    ns = {}
    lines = my_file.load_earlier("09", ns, path=path, needs=["MyFlamingo"])
    assert ns["Resampler"] is fl.PerceiverResampler and ns["GatedBlock"] is fl.GatedCrossAttentionBlock
    assert ns["MyFlamingo"].__module__ != "flamingo_lite.tiny.model"  # the learner's Flamingo, built on the stand-ins
    assert (f"{path.name} has no MyPerceiverResampler yet: using flamingo_lite.PerceiverResampler in its place, for your "
            "lesson 08 code, which calls it") in lines
    # the whole class, failed: Flamingo stands in, and the cell's aliases are not reported as failed names of their own
    my_file.mark_checked("check(MyFlamingo)", True, lesson="08", path=path)
    ns = {}
    lines = my_file.load_earlier("09", ns, path=path, needs=["MyFlamingo"])
    from flamingo_lite.tiny.model import Flamingo

    assert ns["MyFlamingo"] is Flamingo
    assert not any("failed" in line and "Resampler" in line for line in lines)
    assert any(line.startswith("your MyFlamingo failed lesson 08's check") for line in lines)


def test_a_cell_that_takes_a_name_from_the_notebook_is_told_the_file_will_not_run_alone(shell, capsys):
    """A section that calls flamingo_lite (or any name the notebook has and the file does not) runs in the notebook,
    but the file, which imports only torch and einops, would raise NameError on its own: the magic says so."""
    assert shell.run_cell("import flamingo_lite as fl\nfrom torch import nn").success
    capsys.readouterr()
    assert shell.run_cell("%%my_flamingo\nclass MyBlock(nn.Module):\n    def __init__(self, dim):\n"
                          "        super().__init__()\n        self.ff = fl.FeedForward(dim)\n").success
    out = capsys.readouterr().out
    assert "note: this cell uses fl from the notebook, which mine.py neither defines nor imports" in out
    assert shell.run_cell("%%my_flamingo\ndef helper(x):\n    return torch.tanh(x)\n").success  # torch: the file's own
    assert shell.run_cell("%%my_flamingo\ndef twice(x):\n    y = helper(x)\n    return [v for v in (y, y)]\n").success  # helper: an earlier section
    assert "note:" not in capsys.readouterr().out


def test_a_cell_built_on_an_earlier_lessons_stand_in_is_told_there_is_nothing_to_do(shell, capsys):
    """A learner who skipped lesson 05 builds lesson 06's block on flamingo_lite's cross-attention, which the setup
    put in the notebook as MyMaskedCrossAttention: the note says the file is complete once that lesson is done,
    not that this cell is wrong."""
    assert shell.run_cell("from torch import nn").success
    shell.user_ns["MyMaskedCrossAttention"] = fl.MaskedCrossAttention  # what the setup cell puts in its place
    capsys.readouterr()
    assert shell.run_cell("%%my_flamingo\nclass MyBlock(nn.Module):\n    def __init__(self, dim):\n"
                          "        super().__init__()\n        self.attn = MyMaskedCrossAttention(dim=dim)\n").success
    out = capsys.readouterr().out
    assert "note: this cell runs here on flamingo_lite.MaskedCrossAttention for your MyMaskedCrossAttention" in out
    assert "nothing more to do about it here" in out and "will not run on its own" not in out


def test_the_courses_own_cells_take_nothing_from_the_notebook():
    import nbformat

    text = (ROOT / "notebooks" / "my_flamingo.py").read_text(encoding="utf-8")
    defined = my_file.preamble_names() | {n for s in my_file.parse(text) for n in s.names}
    for lesson in sorted((ROOT / "notebooks").glob("0*.ipynb")):
        for cell in nbformat.read(lesson, as_version=4).cells:
            if cell.cell_type == "code" and cell.source.startswith("%%my_flamingo"):
                body = my_file.clean_source(cell.source.split("\n", 1)[1])
                assert my_file.outside_names(body, defined) == [], (lesson.name, body[:80])


def test_a_long_cell_is_warned_of_code_whose_check_failed(shell, checked, capsys):
    """Lesson 09's 800-step training runs the learner's loop: when its check failed, the cell says so before the
    wait, names the failed ones only, and says nothing once the check passes."""
    capsys.readouterr()
    assert my_file.warn_failed("first", "second", what="the training") == ()
    assert capsys.readouterr().out == ""
    shell.user_ns["verdicts"]["first"] = "fail"
    assert isinstance(shell.run_cell("check_it(first)").error_in_exec, ExerciseFailed)
    capsys.readouterr()
    assert my_file.warn_failed("first", "second", what="the training") == ("first",)
    out = capsys.readouterr().out
    assert out.startswith("note: your first failed its check when last run, and the training uses it as it is: fix the cell")
    assert "second" not in out
    assert my_file.failed_checks("first", lesson="06") == ()  # another lesson's sections are not this one's
    del shell.user_ns["verdicts"]["first"]
    assert shell.run_cell("check_it(first)").success
    assert my_file.warn_failed("first", "second") == ()


def test_code_changed_after_its_check_passed_is_marked_in_the_file_until_the_check_runs_again(shell, tmp_path, capsys):
    """The file read on its own, or by a later lesson, tells code its check passed on from code changed since."""
    path = tmp_path / "mine.py"
    my_file.start("04", shell.user_ns)
    right = "%%my_flamingo\ndef my_text_time(media_locations):\n    return media_locations.long().cumsum(dim=-1)"
    other = "%%my_flamingo\ndef my_text_time(media_locations):\n    return media_locations.cumsum(dim=-1).long()"
    wrong = "%%my_flamingo\ndef my_text_time(media_locations):\n    return media_locations.long().cumsum(dim=0)"
    changes = lambda: {s.names: (s.failed, s.changed) for s in my_file.parse(path.read_text())}  # noqa: E731
    assert shell.run_cell("from flamingo_lite.teaching.exercises import lesson04").success
    assert shell.run_cell(right).success and shell.run_cell("lesson04.check_text_time(my_text_time)").success
    assert changes() == {("my_text_time",): (False, False)}
    capsys.readouterr()
    assert shell.run_cell(other).success  # new code, its check not run again
    assert changes() == {("my_text_time",): (False, True)}
    assert f"# === lesson 04: my_text_time === {my_file.CHANGED}\ndef my_text_time" in path.read_text()
    assert "note: your my_text_time changed since check_text_time passed on it: run that check again" in capsys.readouterr().out
    assert shell.run_cell(other).success and changes() == {("my_text_time",): (False, True)}  # the same code: still unchecked
    saved = dict(exercises._CHECKED)
    exercises._CHECKED.clear()  # a restarted kernel knows no verdict: the file's mark is all that says it
    try:
        assert shell.run_cell(other).success and changes() == {("my_text_time",): (False, True)}
        namespace = {}
        lines = my_file.load_earlier("05", namespace, path=path, needs=("my_cross_attention_mask",))
        assert ("your my_text_time changed in lesson 04 after its check passed, and the check has not run on it "
                "since: used as it is (run lesson 04's check again)") in lines
        assert "my_text_time" in namespace  # used, not replaced
    finally:
        exercises._CHECKED.update(saved)
    assert shell.run_cell("lesson04.check_text_time(my_text_time)").success  # the check on the new code: the mark goes
    assert changes() == {("my_text_time",): (False, False)}
    assert shell.run_cell(wrong).success and changes() == {("my_text_time",): (False, True)}
    assert not shell.run_cell("lesson04.check_text_time(my_text_time)").success  # a failed check replaces the mark
    assert changes() == {("my_text_time",): (True, False)}
    assert shell.run_cell(right).success and changes() == {("my_text_time",): (False, False)}  # not judged yet: no mark
    assert shell.run_cell("lesson04.check_text_time(my_text_time)").success
    assert shell.run_cell(wrong).success and changes() == {("my_text_time",): (False, True)}
    assert shell.run_cell(right).success and changes() == {("my_text_time",): (False, False)}  # back to the code it passed
    sections = my_file.parse(path.read_text())
    sections[0].changed = True
    assert my_file.parse(my_file.render(sections)) == sections  # the mark round-trips, and is not read as a name
    assert my_file.CHANGED not in tool.assemble()


def test_a_helper_changed_after_the_check_passed_makes_the_function_unchecked(shell):
    """The checked function calls a helper of the same notebook: the helper redefined alone changes what was checked."""
    helper = "def shifted(media_locations):\n    return media_locations.long()\n"
    user = "def my_text_time(media_locations):\n    return shifted(media_locations).cumsum(dim=-1)"
    assert shell.run_cell("from flamingo_lite.teaching.exercises import failed_checks, needs, lesson04\n"
                          "mine = lambda: [f for f in failed_checks(lesson04) if f.startswith('check_text_time')]").success
    assert shell.run_cell(helper + user).success and shell.run_cell("lesson04.check_text_time(my_text_time)").success
    assert shell.run_cell(helper).success and shell.run_cell("needs(lesson04.check_text_time)").success  # the same helper
    assert shell.run_cell("def shifted(media_locations):\n    return media_locations.long() * 2").success
    stopped = shell.run_cell("needs(lesson04.check_text_time)")
    assert "this cell builds on your my_text_time, changed since check_text_time last ran on it" in str(stopped.error_in_exec)
    assert shell.run_cell("failed = mine()").success
    assert shell.user_ns["failed"] == ["check_text_time, not run since your my_text_time changed"]
    assert shell.run_cell(helper).success and shell.run_cell("needs(lesson04.check_text_time)").success  # back again
    # a function that calls itself, or two that call each other, still has one code to compare
    assert shell.run_cell("def ping(n):\n    return pong(n - 1) if n else 0\ndef pong(n):\n    return ping(n)").success
    code = exercises._code_of(shell.user_ns["ping"])
    assert code == exercises._code_of(shell.user_ns["ping"]) and "pong" in str(code)
