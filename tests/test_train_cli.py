"""The command line: options, the JSON it writes, clear errors for bad options."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from flamingo_lite.tiny import train as cli


def test_help_explains_every_option(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for option in ("--out", "--steps", "--seed", "--device", "--no-only-attend-immediate-media", "--cross-attn-every", "--no-tanh-gate"):
        assert option in text


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--out", "x.json", "--steps", "0"], "positive integer"),
        (["--out", "x.json", "--steps", "ten"], "positive integer"),
        (["--out", "x.json", "--device", "tpu"], "invalid choice"),
        (["--out", "x.json", "--cross-attn-every", "-1"], "positive integer"),
        (["--steps", "3"], "--out"),
        (["--out", "x.json", "--bogus"], "unrecognized"),
    ],
)
def test_bad_options_exit_non_zero_with_a_message(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(argv)
    assert exit_info.value.code != 0
    assert message in capsys.readouterr().err


def test_parser_maps_ablation_flags():
    args = cli.build_parser().parse_args(["--out", "h.json", "--no-only-attend-immediate-media", "--no-tanh-gate", "--cross-attn-every", "2"])
    assert args.only_attend_immediate_media is False and args.tanh_gate is False and args.cross_attn_every == 2
    args = cli.build_parser().parse_args(["--out", "h.json"])
    assert args.only_attend_immediate_media is True and args.tanh_gate is True and args.device == "cpu"


def test_cli_writes_history_json(tmp_path):
    out = tmp_path / "sub" / "history.json"
    result = subprocess.run(
        [sys.executable, "-m", "flamingo_lite.train", "--out", str(out), "--steps", "3", "--lm-steps", "2", "--log-every", "2",
         "--no-progress", "--no-tanh-gate", "--cross-attn-every", "2"],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stderr
    history = json.loads(out.read_text())
    assert len(history["loss"]) == len(history["attn_gate_tanh"]) == len(history["ff_gate_tanh"]) == 3  # steps 0, 2, 3
    assert history["attn_gate_tanh"][0] == [1.0]  # one block (every 2nd of 2 layers), fixed open
    assert 0.0 <= history["heldout_caption_accuracy"] <= 1.0 and history["seconds"] > 0
    assert history["config"]["model"]["tanh_gate"] is False and history["config"]["model"]["cross_attn_every"] == 2
    assert "held-out caption accuracy" in result.stdout


# ------------------------------------------------------------------ --out and --threads, checked before any work
FAKE_HISTORY = {"loss": [2.0, 1.0], "attn_gate_tanh": [[0.0], [0.5]], "ff_gate_tanh": [[0.0], [0.25]],
                "heldout_caption_accuracy": 0.5, "seconds": 1.5, "config": {}}


@pytest.fixture
def fake_training(monkeypatch):
    """run_training replaced by one that returns a fixed history at once; `calls` counts the runs."""
    calls = []

    def run_training(setup, config, device, progress, world=None):
        calls.append(setup)
        return None, json.loads(json.dumps(FAKE_HISTORY))

    monkeypatch.setattr(cli, "run_training", run_training)
    return calls


@pytest.mark.parametrize(
    "out, message",
    [
        ("", "--out is empty"),
        (".", "is a folder"),
        ("existing_folder", "is a folder"),
        ("a_file/history.json", "is a file, not a folder"),
    ],
)
def test_a_bad_out_is_refused_before_any_training(out, message, tmp_path, monkeypatch, fake_training, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "existing_folder").mkdir()
    (tmp_path / "a_file").write_text("not a folder")
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--out", out, "--no-progress"])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err
    assert fake_training == []  # refused before the training started


def test_an_unwritable_folder_is_refused_before_any_training(tmp_path, monkeypatch, fake_training, capsys):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    if os.geteuid() == 0:  # root may write anywhere: answer as the kernel answers everyone else
        from flamingo_lite import files

        real_access = os.access
        monkeypatch.setattr(files.os, "access", lambda p, mode: False if Path(p) == locked else real_access(p, mode))
    try:
        with pytest.raises(SystemExit) as exit_info:
            cli.main(["--out", str(locked / "history.json"), "--no-progress"])
    finally:
        locked.chmod(0o755)
    assert exit_info.value.code == 2
    assert "no permission to write into" in capsys.readouterr().err
    assert fake_training == []


def test_out_dash_writes_the_json_to_stdout_and_no_file(tmp_path, monkeypatch, fake_training, capsys):
    monkeypatch.chdir(tmp_path)
    assert cli.main(["--out", "-", "--no-progress", "--threads", "1"]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out) == {**FAKE_HISTORY, "config": {"threads": 1}}  # only the JSON on stdout
    assert "held-out caption accuracy 0.500" in captured.err and "wrote the standard output" in captured.err
    assert list(tmp_path.iterdir()) == []  # no file named '-'
    assert "standard output" in cli.build_parser().format_help()


def test_a_failed_write_keeps_the_old_history_and_prints_the_new_one(tmp_path, monkeypatch, fake_training, capsys):
    from flamingo_lite import files

    out = tmp_path / "history.json"
    out.write_text('{"earlier": "run"}')

    def full_disk(*args):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(files.os, "replace", full_disk)
    assert cli.main(["--out", str(out), "--no-progress"]) == 3  # not 1, the status of a run that failed
    captured = capsys.readouterr()
    assert out.read_text() == '{"earlier": "run"}'  # intact
    assert sorted(p.name for p in tmp_path.iterdir()) == ["history.json"]  # no temporary file left
    assert "could not write --out" in captured.err and "No space left on device" in captured.err
    assert f"not written: --out {out}" in captured.err
    assert json.loads(captured.out)["loss"] == FAKE_HISTORY["loss"]  # the run is not lost


def test_the_history_replaces_an_earlier_file_and_creates_its_folders(tmp_path, fake_training):
    out = tmp_path / "runs" / "one" / "history.json"
    assert cli.main(["--out", str(out), "--no-progress"]) == 0
    assert json.loads(out.read_text())["heldout_caption_accuracy"] == 0.5
    out.write_text("old")
    assert cli.main(["--out", str(out), "--no-progress"]) == 0
    assert json.loads(out.read_text())["loss"] == FAKE_HISTORY["loss"]


@pytest.mark.parametrize("threads, message", [("64", "at most 2"), ("3", "at most 2"), ("0", "positive integer")])
def test_threads_are_bounded_as_the_help_says(threads, message, tmp_path, fake_training, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--out", str(tmp_path / "x.json"), "--threads", threads, "--no-progress"])
    assert exit_info.value.code == 2
    assert fake_training == []
    assert message in capsys.readouterr().err
    assert "1 to 2" in cli.build_parser().format_help()
    assert cli.build_parser().parse_args(["--out", "x.json", "--threads", "2"]).threads == 2


def test_the_command_line_refuses_a_folder_with_exit_code_2(tmp_path):
    result = subprocess.run([sys.executable, "-m", "flamingo_lite.train", "--out", str(tmp_path)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert "is a folder" in result.stderr and "Traceback" not in result.stderr


# ------------------------------------------------------------------ --task fewshot: the model file and the history
@pytest.fixture
def fake_fewshot(monkeypatch):
    """run_from_command_line replaced by one that returns a history, a summary and the model file's bytes at once."""
    calls = []

    def run_from_command_line(args, argv=None):
        calls.append(args)
        return json.loads(json.dumps(FAKE_HISTORY)), "shots curve 0:0.06", None if args.save_model is None else b"the model"

    monkeypatch.setattr(cli, "run_from_command_line", run_from_command_line)
    return calls


def failing_for(suffixes):
    """os.replace that fails (a full disk) for targets with these suffixes and works for the others."""
    real = os.replace

    def replace(src, dst):
        if Path(dst).suffix in suffixes:
            raise OSError(28, "No space left on device")
        return real(src, dst)

    return replace


def test_a_model_that_cannot_be_written_loses_neither_the_history_nor_the_message(tmp_path, monkeypatch, fake_fewshot, capsys):
    from flamingo_lite import files

    out, model = tmp_path / "fewshot.json", tmp_path / "models" / "model.pt"
    monkeypatch.setattr(files.os, "replace", failing_for({".pt"}))
    assert cli.main(["--task", "fewshot", "--out", str(out), "--save-model", str(model), "--no-progress"]) == 3
    captured = capsys.readouterr()
    assert json.loads(out.read_text())["loss"] == FAKE_HISTORY["loss"]  # the history is written all the same
    assert not model.exists() and list(model.parent.iterdir()) == []  # no half file, no temporary file
    assert f"could not write --save-model {model}" in captured.err and f"not written: --save-model {model}" in captured.err
    assert f"wrote {out}" in captured.out


def test_when_both_writes_fail_the_history_is_printed_and_both_are_named(tmp_path, monkeypatch, fake_fewshot, capsys):
    from flamingo_lite import files

    out, model = tmp_path / "fewshot.json", tmp_path / "model.pt"
    monkeypatch.setattr(files.os, "replace", failing_for({".pt", ".json"}))
    assert cli.main(["--task", "fewshot", "--out", str(out), "--save-model", str(model), "--no-progress"]) == 3
    captured = capsys.readouterr()
    assert json.loads(captured.out)["loss"] == FAKE_HISTORY["loss"]  # only the JSON on the standard output
    assert f"not written: --save-model {model}; --out {out}" in captured.err and "wrote nothing" in captured.err
    assert list(tmp_path.iterdir()) == []


def test_the_model_and_the_history_are_both_written_when_they_can_be(tmp_path, fake_fewshot):
    out, model = tmp_path / "fewshot.json", tmp_path / "model.pt"
    assert cli.main(["--task", "fewshot", "--out", str(out), "--save-model", str(model), "--no-progress"]) == 0
    assert model.read_bytes() == b"the model" and json.loads(out.read_text())["seconds"] == 1.5


def test_shots_beyond_the_pool_and_a_save_model_without_fewshot_are_refused_before_any_work(tmp_path, fake_fewshot, fake_training, capsys):
    for argv, message in [(["--task", "fewshot", "--shots", "0,4,49"], "in [0, 48]"),
                          (["--save-model", str(tmp_path / "m.pt")], "--save-model is for --task fewshot"),
                          (["--many-links"], "--many-links is for --task fewshot"),
                          (["--colliding-links"], "--colliding-links is for --task fewshot"),
                          (["--task", "fewshot", "--many-links", "--colliding-links"], "without --many-links")]:
        with pytest.raises(SystemExit) as refused:
            cli.main(["--out", str(tmp_path / "x.json"), *argv])
        assert refused.value.code == 2 and message in capsys.readouterr().err
    assert fake_fewshot == [] and fake_training == []
    assert "each 0 to 48" in cli.build_parser().format_help() and "Exit status" in cli.build_parser().format_help()


def test_many_links_trains_on_the_nine_links(monkeypatch):
    """--many-links gives run_fewshot a setup whose training episodes vary the link (fewshot.MANY_LINKS), never `a`."""
    from flamingo_lite.tiny import fewshot as fs

    seen = []
    monkeypatch.setattr(fs, "run_fewshot", lambda setup, **kw: seen.append(setup) or (None, {"config": {}, "shots_curve": {}, "chance": 1 / 16, "seconds": 0.0}))
    for argv, links, articles in ((["--many-links"], fs.MANY_LINKS, ("a",)), ([], (fs.IS,), ("a",)),
                                  (["--colliding-links"], fs.COLLIDING_LINKS, fs.CAPTION_ARTICLES)):
        args = cli.build_parser().parse_args(["--task", "fewshot", "--out", "x.json", *argv])
        fs.run_from_command_line(args, ["--task", "fewshot", *argv])
        assert (seen[-1].links, seen[-1].articles) == (links, articles)
    assert len(fs.MANY_LINKS) == 9 and "a" not in fs.MANY_LINKS and "" in fs.MANY_LINKS
