"""Data-parallel training: `torchrun --nproc_per_node 2 -m flamingo_lite.train` (gloo, CPU) against one process.

Two processes that share each global batch must give the history of one process with that batch: the same loss at
every step of both stages, the same gates, to a relative 1e-4 (float rounding only). The batch is odd (7), so the
two processes get 4 and 3 sequences: the loss must still be the mean over the whole batch's tokens. The same with
`--fsdp` (the model sharded with torch's fully_shard). Only the main process writes the output.
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from flamingo_lite.tiny import distributed
from flamingo_lite.tiny import train as cli
from flamingo_lite.tiny.training import next_token_loss, next_token_loss_sum

ROOT = Path(__file__).resolve().parent.parent
RUN = ["--steps", "4", "--lm-steps", "3", "--log-every", "1", "--batch-size", "7", "--threads", "1", "--no-progress"]
TOLERANCE = 1e-4
TORCHRUN_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "TORCHELASTIC_USE_AGENT_STORE")


def environment() -> dict:
    env = {k: v for k, v in os.environ.items() if k not in TORCHRUN_ENV}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env["FLAMINGO_DEVICE"] = "cpu"
    return env


def train(out: Path, processes: int, *extra: str) -> dict:
    """Run the command line in `processes` processes (torchrun when more than one) and read the history."""
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}"]
    cmd = (launcher + ["-m", "flamingo_lite.train"] if processes > 1 else [sys.executable, "-m", "flamingo_lite.train"])
    done = subprocess.run(cmd + ["--out", str(out), *RUN, *extra], cwd=out.parent, env=environment(),
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert done.returncode == 0, f"{' '.join(cmd)} failed:\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}"
    return json.loads(out.read_text())


def relative_difference(a, b) -> float:
    a, b = torch.tensor(a, dtype=torch.float64), torch.tensor(b, dtype=torch.float64)
    assert a.shape == b.shape, (a.shape, b.shape)
    return float(((a - b).abs() / a.abs().clamp_min(1e-3)).max())


@pytest.fixture(scope="module")
def one_process(tmp_path_factory):
    return train(tmp_path_factory.mktemp("one") / "history.json", 1)


@pytest.mark.parametrize("mode", ["ddp", "fsdp"])
def test_two_processes_give_the_history_of_one(mode, one_process, tmp_path):
    out = tmp_path / "history.json"
    two = train(out, 2, *(["--fsdp"] if mode == "fsdp" else []))
    assert two["processes"] == 2 and one_process["processes"] == 1
    assert len(two["loss"]) == len(one_process["loss"]) == 5 and len(two["lm_loss"]) == 3
    for key in ("loss", "loss_every_step", "lm_loss", "attn_gate_tanh", "ff_gate_tanh"):
        difference = relative_difference(one_process[key], two[key])
        print(f"{mode}: {key} largest relative difference {difference:.2e}")
        assert difference <= TOLERANCE, f"{mode}: {key} differs by {difference:.2e} (relative) from one process"
    assert abs(two["heldout_caption_accuracy"] - one_process["heldout_caption_accuracy"]) <= 0.01
    assert one_process["loss"][-1] < one_process["loss"][0]  # it trained: the comparison is not of two no-ops
    assert [p.name for p in tmp_path.iterdir()] == ["history.json"]  # one file, from one process; no temporary left


# ----------------------------------------------------------------------------------------------------------------
# the pieces, in one process


def test_each_process_takes_a_contiguous_share_and_together_the_whole_batch():
    idx = torch.arange(7)
    shares = [distributed.shard(distributed.World(rank=r, world_size=2), idx) for r in range(2)]
    assert [s.tolist() for s in shares] == [[0, 1, 2, 3], [4, 5, 6]]
    assert distributed.shard(distributed.World(), idx) is idx


def test_the_loss_of_one_share_is_the_batch_mean_in_one_process():
    torch.manual_seed(0)
    logits, tokens = torch.randn(3, 6, 11), torch.randint(0, 11, (3, 6))  # (b, n, V), (b, n); 0 is padding
    loss, mean = distributed.mean_loss(distributed.World(), *next_token_loss_sum(logits, tokens, 0))
    torch.testing.assert_close(loss, next_token_loss(logits, tokens, 0))
    assert mean == pytest.approx(float(next_token_loss(logits, tokens, 0)))


def test_each_rank_draws_its_own_numbers():
    draws = []
    for rank in range(2):
        distributed.seed_rank(distributed.World(rank=rank, world_size=2), 5)
        draws.append(torch.rand(3))
    assert not torch.equal(draws[0], draws[1])


def test_more_processes_than_the_batch_has_sequences_is_refused_naming_both(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("WORLD_SIZE", "3")
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--out", str(tmp_path / "h.json"), "--batch-size", "2", "--no-progress"])
    assert exit_info.value.code == 2
    said = capsys.readouterr().err
    assert "3 processes cannot split a batch of 2 sequences (--batch-size=2)" in said
    assert not (tmp_path / "h.json").exists()


def test_fsdp_without_torchrun_says_how_to_start_it(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--out", str(tmp_path / "h.json"), "--fsdp"])
    assert exit_info.value.code == 2 and "torchrun --nproc_per_node 2 -m flamingo_lite.train" in capsys.readouterr().err


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # free once the socket closes: nothing listens there


def test_an_unreachable_rendezvous_fails_within_seconds_with_the_command_to_run(tmp_path, monkeypatch, capsys):
    port = closed_port()
    for name, value in {"WORLD_SIZE": "2", "RANK": "1", "LOCAL_RANK": "1", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("TORCHELASTIC_USE_AGENT_STORE", raising=False)
    start = time.monotonic()
    code = cli.main(["--out", str(tmp_path / "h.json"), "--rendezvous-timeout", "2", "--no-progress"])
    seconds = time.monotonic() - start
    said = capsys.readouterr().err
    assert code == 1 and seconds < 10, (code, seconds)
    assert f"process 1 of 2 could not reach the rendezvous at MASTER_ADDR:MASTER_PORT = 127.0.0.1:{port}" in said
    assert "torchrun --nproc_per_node 2 -m flamingo_lite.train" in said
    assert not (tmp_path / "h.json").exists()


def test_world_size_without_the_rest_of_the_launch_says_to_use_torchrun(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    for name in ("RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(distributed.RendezvousError, match="RANK, MASTER_ADDR, MASTER_PORT are not set.*torchrun --nproc_per_node 2"):
        distributed.start("cpu")
