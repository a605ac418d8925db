#!/usr/bin/env python3
"""Draw the recorded media sweep: forward + backward time of MaskedCrossAttention against the number of media.

    python benchmarks/plot.py                                   # benchmarks/results/cpu_fp32.json -> .png beside it
    python benchmarks/plot.py benchmarks/results/cuda_bf16.json

Reads the JSON that benchmarks/bench.py wrote (it never times anything itself), so the picture always shows
recorded numbers, and says in its title which machine they came from.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing

from flamingo_lite.files import RunOutputs, figure_bytes, write_figure_atomic  # noqa: E402
from flamingo_lite.options import check_outputs, read_json_inputs  # noqa: E402

LABELS = {
    "seed": "flamingo-pytorch 0.1.2 (masks every media)",
    "masked": "flamingo_lite, masked path",
    "segments": "flamingo_lite, segment path",
    "projections_only": "projections only, no attention (the floor)",
}
STYLES = {"seed": dict(color="0.4", marker="s"), "masked": dict(color="tab:orange", marker="o"),
          "segments": dict(color="tab:blue", marker="^"),
          "projections_only": dict(color="0.6", linestyle="--", marker="")}


def picture_path(record_path: Path) -> Path:
    """Where the picture of a record goes: beside it, `<name>_media_sweep.png`."""
    return record_path.with_name(record_path.stem + "_media_sweep.png")


def plot(path: Path) -> Path:
    """Draw the record at `path` and write the picture beside it (atomically); returns the picture's path."""
    fig = draw(json.loads(path.read_text()))
    out = write_figure_atomic(fig, picture_path(path))
    plt.close(fig)
    return out


def draw(record: dict):
    """The media sweep of a record bench.py wrote, as a matplotlib figure."""
    sweep = record["sweep"]
    media = sorted(int(t) for t in sweep)
    fig, ax = plt.subplots(figsize=(6.4, 3.8), dpi=80)
    for impl, label in LABELS.items():
        if impl not in sweep[str(media[0])]:
            continue
        ms = [sweep[str(t)][impl]["median_ms"] for t in media]
        ax.plot(media, ms, label=label, **STYLES[impl])
    ax.set_xscale("log", base=2)
    ax.set_xticks(media, [str(t) for t in media])
    ax.set_ylim(bottom=0)
    ax.set_xlabel("number of media t (64 latents each)")
    ax.set_ylabel(f"forward + backward, median ms\n({record['machine'].get('clock', 'wall time')})", fontsize=9)
    c, m = record["sizes"]["cross_attention"], record["machine"]
    device = m.get("gpu", m["cpu"]) if record["device"].startswith("cuda") else f"{m['cpu']}, {m['torch_threads']} thread(s)"
    ax.set_title(f"MaskedCrossAttention, b={c['batch']}, n={c['text']}, d={c['dim']}, {record['dtype']}\n{device}",
                 fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    return fig


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("record", nargs="?", type=Path, default=ROOT / "benchmarks" / "results" / "cpu_fp32.json",
                        help="a JSON record bench.py wrote (default benchmarks/results/cpu_fp32.json); the picture goes beside it")
    args = parser.parse_args(argv)
    record = read_json_inputs(parser, {"record": args.record})["record"]  # before any drawing: exit status 2
    if "sweep" not in record:
        parser.error(f"record {str(args.record)!r} has no media sweep: run python benchmarks/bench.py --only sweep")
    out = check_outputs(parser, {"the picture": picture_path(args.record)})["the picture"]
    fig = draw(record)
    outputs = RunOutputs()
    if outputs.write("the picture", out, figure_bytes(fig, out)):
        print(f"wrote {out.relative_to(ROOT) if out.is_relative_to(ROOT) else out}")
    plt.close(fig)
    return outputs.exit_code()


if __name__ == "__main__":
    sys.exit(main())
