"""Draw lesson 10's pictures and copy its benchmark numbers: `python assets/make_lesson10.py`.

1. `lesson10_mask_vs_segments.png`: the mask view (every text token scored against every media latent, most of
   it masked away) beside the segment view (each run of text scored against its own media only), for a tiny
   example whose mask comes from `flamingo_lite.masks`, the function the model uses.
2. `lesson10_benchmark_cpu.json` and `lesson10_benchmark_cpu.png`: a frozen copy of the recorded CPU benchmark
   (benchmarks/results/cpu_fp32.json, made by benchmarks/bench.py) and its plot, so the lesson shows recorded
   numbers and does not change when someone re-runs the benchmark. Run this script again to refresh them.
"""
import json
import shutil
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from matplotlib.patches import Rectangle  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from flamingo_lite.masks import cross_attention_mask, text_time  # noqa: E402
from flamingo_lite.files import write_figure_atomic, write_text_atomic  # noqa: E402

HERE = Path(__file__).resolve().parent
MEDIA_COLORS = ["#4e79a7", "#f28e2b", "#59a14f"]


def draw_views(out: Path) -> None:
    locations = torch.tensor([[0, 0, 1, 0, 0, 0, 1, 0, 0, 1, 0, 0]], dtype=torch.bool)  # (1, n): text first
    t, m = 3, 3
    n = locations.shape[1]
    times = text_time(locations)[0]  # (n,)
    mask = cross_attention_mask(locations, t, m, True)[0]  # (n, t*m)

    fig, (left, right) = plt.subplots(1, 2, figsize=(9.0, 3.9), dpi=80, gridspec_kw=dict(width_ratios=[1, 1.25]))
    # mask view: the full n x (t*m) grid of scores; coloured where kept, grey where masked
    for i in range(n):
        for j in range(t * m):
            kept = bool(mask[i, j])
            color = MEDIA_COLORS[j // m] if kept else "#e6e6e6"
            left.add_patch(Rectangle((j, n - 1 - i), 1, 1, fc=color, ec="white", lw=1))
    left.set_xlim(0, t * m)
    left.set_ylim(0, n)
    left.set_xticks([m * k + m / 2 for k in range(t)], [f"media {k + 1}\n({m} latents)" for k in range(t)], fontsize=8)
    left.set_yticks([n - 1 - i + 0.5 for i in range(n)], [f"{'<image>' if locations[0, i] else 'word'} {int(times[i])}"
                                                          for i in range(n)], fontsize=7)
    left.set_title(f"mask view: {n} x {t * m} = {n * t * m} scores,\n{int(mask.sum())} kept, the rest masked", fontsize=9)
    left.set_ylabel("token (label: its text time)", fontsize=8)
    left.tick_params(length=0)
    for side in left.spines.values():
        side.set_visible(False)

    # segment view: each run of text with text time k >= 1 meets only media k's latents
    right.set_xlim(0, 3 * (m + 1.5))
    right.set_ylim(0, n)
    for i in range(n):
        if times[i] == 0:
            right.add_patch(Rectangle((0, n - 1 - i), m, 1, fc="white", ec="#bbbbbb", lw=1, ls="--"))
    right.text(m + 0.3, n - 1, "text time 0: sees nothing,\noutput exactly 0", fontsize=7, va="center")
    for k in range(1, t + 1):
        rows = [i for i in range(n) if times[i] == k]
        x0 = (k - 1) * (m + 1.5)
        for i in rows:
            for j in range(m):
                right.add_patch(Rectangle((x0 + j, n - 1 - i), 1, 1, fc=MEDIA_COLORS[k - 1], ec="white", lw=1))
        right.text(x0 + m / 2, n - 1 - rows[-1] - 0.7, f"segment {k}\n{len(rows)} x {m}", ha="center", va="top", fontsize=7)
    kept = int(mask.sum())
    right.set_title(f"segment view: only the {kept} kept scores are computed,\neach segment against its own media",
                    fontsize=9)
    right.axis("off")
    fig.tight_layout()
    write_figure_atomic(fig, out)
    plt.close(fig)


def copy_benchmark() -> None:
    source = ROOT / "benchmarks" / "results" / "cpu_fp32.json"
    if not source.exists():
        print(f"no {source.relative_to(ROOT)}: run python benchmarks/bench.py first; keeping the old copy")
        return
    record = json.loads(source.read_text())
    keep = {k: record[k] for k in ("machine", "device", "dtype", "repeats", "sizes", "sweep", "memory") if k in record}
    write_text_atomic(HERE / "lesson10_benchmark_cpu.json", json.dumps(keep, indent=1) + "\n")
    plot = source.with_name(source.stem + "_media_sweep.png")
    if plot.exists():
        shutil.copyfile(plot, HERE / "lesson10_benchmark_cpu.png")


if __name__ == "__main__":
    draw_views(HERE / "lesson10_mask_vs_segments.png")
    copy_benchmark()
    print("wrote assets/lesson10_*")
