"""The command line: options, the JSON it writes, clear errors for bad options."""
import json
import subprocess
import sys

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
