"""Every command line checks its options and its output paths before any work (exit status 2), and a run that cannot
write one of its outputs still writes or prints the others, names what failed, and exits with status 3.

The command lines: python -m flamingo_lite.train, python -m flamingo_lite.tiny.contrastive, and the scripts in
benchmarks/ (fewshot.py has its own tests).
"""
import argparse
import functools
import errno
import json

import pytest

from flamingo_lite import files, options
from flamingo_lite.tiny import contrastive, train

from test_files import ROOT, load_script

INTEGER_TYPES = {options.positive_int, options.non_negative_int, options.seed_int, train.thread_count, train.shot_counts}
script_module = functools.lru_cache(load_script)  # one module per script, so that its own types compare equal
INTEGER_TYPES |= {script_module("hf").thread_count}
CHECKED_TYPES = INTEGER_TYPES | {options.positive_seconds}  # every numeric option's type


def parser_of(name: str) -> argparse.ArgumentParser:
    if name == "train":
        return train.build_parser()
    if name == "contrastive":
        return contrastive.build_parser()
    if name == "bench":
        pytest.importorskip("flamingo_pytorch")  # the benchmark times it
    return script_module(name).build_parser()


REQUIRED = {"train": ["--out", "x.json"], "contrastive": ["--out", "x.pt"]}

# every integer option of every command line, with a value out of its range
OUT_OF_RANGE = [
    ("train", "--steps", "0"), ("train", "--lm-steps", "-3"), ("train", "--seed", "4294967296"), ("train", "--seed", "-1"),
    ("train", "--cross-attn-every", "0"), ("train", "--log-every", "0"), ("train", "--threads", "3"),
    ("train", "--shots", "0,49"), ("train", "--batch-size", "0"),
    ("train", "--rendezvous-timeout", "0"), ("train", "--rendezvous-timeout", "nan"),
    ("contrastive", "--seed", "4294967296"), ("contrastive", "--steps", "0"),
    ("ablations", "--seeds", "-1"), ("ablations", "--seeds", "4294967296"), ("ablations", "--workers", "0"),
    ("vision_ablations", "--seeds", "4294967296"), ("vision_ablations", "--budgets", "0"),
    ("generation", "--threads", "0"), ("generation", "--repeats", "0"), ("generation", "--new-tokens", "0"),
    ("bench", "--repeats", "0"), ("bench", "--threads", "-2"),
    ("hf", "--repeats", "0"), ("hf", "--threads", "3"),
]


@pytest.mark.parametrize("script, option, value", OUT_OF_RANGE, ids=[f"{s}{o}={v}" for s, o, v in OUT_OF_RANGE])
def test_an_integer_option_out_of_range_is_refused_by_the_parser(script, option, value, capsys):
    parser = parser_of(script)
    with pytest.raises(SystemExit) as refused:
        parser.parse_args([*REQUIRED.get(script, []), option, value])
    assert refused.value.code == 2
    err = capsys.readouterr().err
    assert f"argument {option}" in err and "expected" in err and "Traceback" not in err


@pytest.mark.parametrize("script", ["train", "contrastive", "ablations", "vision_ablations", "generation", "bench", "hf"])
def test_every_integer_option_has_a_checked_range_and_a_case_above(script):
    """No option is parsed by plain `int` or `float`, and the table above covers each numeric option of each command line."""
    actions = [a for a in parser_of(script)._actions if a.option_strings and a.help != argparse.SUPPRESS]
    assert [a.option_strings for a in actions if a.type in (int, float)] == []
    integer = {a.option_strings[-1] for a in actions if a.type in CHECKED_TYPES}
    assert integer == {option for s, option, _ in OUT_OF_RANGE if s == script}


def test_the_largest_seed_is_accepted_and_a_run_with_it_works():
    """2**32 - 1 passes the parser, and the run, which also seeds numpy with seed + 1, does not fail later."""
    from flamingo_lite.tiny.model import FlamingoConfig
    from flamingo_lite.tiny.training import TrainingSetup, run_training

    assert train.build_parser().parse_args(["--out", "x.json", "--seed", "4294967295"]).seed == 2**32 - 1
    setup = TrainingSetup(steps=1, lm_steps=1, batch_size=4, num_train=8, num_heldout=4, log_every=1, seed=2**32 - 1)
    _, history = run_training(setup, FlamingoConfig(vision="handmade"), progress=False)
    assert history["config"]["training"]["seed"] == 2**32 - 1 and len(history["loss"]) == 2


def test_two_outputs_naming_one_file_are_refused(tmp_path, capsys):
    target = str(tmp_path / "same.json")
    with pytest.raises(SystemExit) as refused:
        train.main(["--task", "fewshot", "--out", target, "--save-model", target, "--no-progress"])
    assert refused.value.code == 2
    assert "--out and --save-model both name" in capsys.readouterr().err
    assert options.check_outputs(argparse.ArgumentParser(), {"--out": "/dev/null", "--save-model": "/dev/null"})


# ------------------------------------------------------------------ benchmarks: options and paths before any work
def never(*args, **kwargs):
    raise AssertionError("the work started before the options were checked")


@pytest.mark.parametrize(
    "script, work, argv, message",
    [
        ("ablations", "get_context", ["--out", "{folder}"], "is a folder"),
        ("vision_ablations", "run_one", ["--out", "{folder}"], "is a folder"),
        ("generation", "Flamingo", ["--out", "{folder}"], "is a folder"),
        ("generation", "Flamingo", ["--out", "{file}/below/a/file.json"], "is a file, not a folder"),
        ("bench", "machine", ["--out", "{folder}"], "is a folder"),
        ("bench", "machine", ["--out", "{file}"], "holds no JSON record"),
        ("bench", "machine", ["--only", "before", "--out", "{folder}/b.json"], "--only before needs --before TREE"),
        ("bench", "machine", ["--only", "before", "--before", "{folder}", "--out", "{folder}/b.json"], "--before"),
        ("bench", "machine", ["--device", "tpu"], "expected a device"),
        ("plot", "draw", ["{folder}/missing.json"], "is missing: expected a file"),
        ("plot", "draw", ["{file}"], "holds no JSON record"),
        ("report", "tables", ["{folder}/missing.json"], "is missing: expected a file"),
    ],
)
def test_every_benchmark_checks_its_options_and_paths_before_any_work(script, work, argv, message, tmp_path, monkeypatch, capsys):
    if script == "bench":
        pytest.importorskip("flamingo_pytorch")
    module = load_script(script)
    monkeypatch.setattr(module, work, never)
    (tmp_path / "folder").mkdir()
    (tmp_path / "file").write_text("not json")
    argv = [a.format(folder=tmp_path / "folder", file=tmp_path / "file") for a in argv]
    with pytest.raises(SystemExit) as refused:
        module.main(argv)
    assert refused.value.code == 2
    assert message in capsys.readouterr().err


def test_the_plot_and_the_report_check_where_they_write_before_any_work(tmp_path, monkeypatch, capsys):
    record = tmp_path / "cpu_fp32.json"
    record.write_text((ROOT / "benchmarks" / "results" / "cpu_fp32.json").read_text())
    (tmp_path / "cpu_fp32_media_sweep.png").mkdir()  # where the picture would go
    plot = load_script("plot")
    monkeypatch.setattr(plot, "draw", never)
    with pytest.raises(SystemExit) as refused:
        plot.main([str(record)])
    assert refused.value.code == 2 and "the picture" in capsys.readouterr().err
    report = load_script("report")
    monkeypatch.setattr(report, "README", tmp_path)  # a folder
    monkeypatch.setattr(report, "tables", never)
    with pytest.raises(SystemExit) as refused:
        report.main([str(record)])
    assert refused.value.code == 2 and "the README" in capsys.readouterr().err


# ------------------------------------------------------------------ a write that fails: the rest written, exit 3
def full_disk(*args):
    raise OSError(errno.ENOSPC, "No space left on device")


def test_run_outputs_writes_the_others_and_prints_the_text_that_failed(tmp_path, monkeypatch, capsys):
    real_replace = files.os.replace
    monkeypatch.setattr(files.os, "replace", lambda src, dst: full_disk() if str(dst).endswith(".bin") else real_replace(src, dst))
    outputs = files.RunOutputs()
    assert outputs.write("--model", tmp_path / "model.bin", b"\x00weights") is False
    assert outputs.write("--out", tmp_path / "deeper" / "history.json", '{"loss": [1]}') is True
    assert outputs.write("--table", tmp_path / "table.bin", "| a | b |") is False
    assert outputs.exit_code() == files.NOT_WRITTEN == 3
    captured = capsys.readouterr()
    assert (tmp_path / "deeper" / "history.json").read_text() == '{"loss": [1]}'
    assert captured.out == "| a | b |\n"  # the text that failed, printed; the bytes are not
    assert "could not write --model" in captured.err and "it is lost" in captured.err
    assert f"not written: --model {tmp_path / 'model.bin'}; --table {tmp_path / 'table.bin'}" in captured.err


def test_the_generation_benchmark_prints_its_record_when_it_cannot_write_it(tmp_path, monkeypatch, capsys):
    generation = load_script("generation")
    out = tmp_path / "generation.json"
    out.write_text("{}")
    monkeypatch.setattr(files.os, "replace", full_disk)
    assert generation.main(["--out", str(out), "--repeats", "1", "--new-tokens", "2"]) == 3
    captured = capsys.readouterr()
    assert json.loads(captured.out)["repeats"] == 1 and out.read_text() == "{}"
    assert f"not written: --out {out}" in captured.err


def test_the_ablation_benchmark_prints_its_record_when_it_cannot_write_it(tmp_path, monkeypatch, capsys):
    ablations = load_script("ablations")

    class InProcess:  # the pool, without processes
        def Pool(self, workers):
            return self

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def map(self, function, jobs, chunksize=1):
            return [function(job) for job in jobs]

    fake = {"heldout_caption_accuracy": 0.5, "heldout_flamingo_text_loss": 1.0}
    monkeypatch.setattr(ablations, "get_context", lambda method: InProcess())
    monkeypatch.setattr(ablations, "run_one", lambda job: {"variant": job[0], "seed": job[1], **fake})
    monkeypatch.setattr(files.os, "replace", full_disk)
    assert ablations.main(["--seeds", "0", "--out", str(tmp_path / "ablations.json")]) == 3
    captured = capsys.readouterr()
    assert '"summary"' in captured.out and "not written: --out" in captured.err
    assert list(tmp_path.iterdir()) == []


def test_the_plot_command_says_when_it_cannot_write_the_picture(tmp_path, monkeypatch, capsys):
    record = tmp_path / "cpu_fp32.json"
    record.write_text((ROOT / "benchmarks" / "results" / "cpu_fp32.json").read_text())
    monkeypatch.setattr(files.os, "replace", full_disk)
    assert load_script("plot").main([str(record)]) == 3
    assert "not written: the picture" in capsys.readouterr().err
    assert [p.name for p in tmp_path.iterdir()] == ["cpu_fp32.json"]
