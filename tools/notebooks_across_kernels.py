"""Run the lessons under other floating-point kernels and show how far each printed number moves.

    python tools/notebooks_across_kernels.py                       every setting below, every lesson
    python tools/notebooks_across_kernels.py --setting aten-default-1thread notebooks/09_training_and_gates.ipynb

A lesson's committed outputs were made on one CPU. Another CPU adds and multiplies in another order (other SIMD
widths, BLAS kernels, thread counts), so the same notebook prints slightly different numbers there. On one machine
the same differences can be provoked: PyTorch picks its vectorised kernels by `ATEN_CPU_CAPABILITY`
(default = no SIMD, avx2, avx512), oneDNN and MKL can be held to AVX2, and the thread count changes how sums are
split. This script executes each lesson in a fresh kernel under each setting and compares every code cell's text
with the committed one the way the nbval margin plugin does (tests/nbval_margins.py): a cell is reported when
its text differs, with the largest difference between its numbers and the margin it has. Nothing is written into
the repository; the executed copies go to a temporary folder (or to `--keep DIR`).

Exit code 0 when every cell agrees within its margin under every setting, 1 otherwise.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.nbval_margins import NUMBER, cell_margin, texts_agree  # noqa: E402

SETTINGS = {
    "native-2threads": {"OMP_NUM_THREADS": "2"},
    "native-1thread": {"OMP_NUM_THREADS": "1"},
    "aten-avx2-2threads": {"ATEN_CPU_CAPABILITY": "avx2", "OMP_NUM_THREADS": "2"},
    "aten-default-1thread": {"ATEN_CPU_CAPABILITY": "default", "OMP_NUM_THREADS": "1"},
    "aten-default-2threads": {"ATEN_CPU_CAPABILITY": "default", "OMP_NUM_THREADS": "2"},
    "blas-avx2-2threads": {"MKL_ENABLE_INSTRUCTIONS": "AVX2", "ONEDNN_MAX_CPU_ISA": "AVX2", "OMP_NUM_THREADS": "2"},
}


def cell_texts(cell) -> list[str]:
    """The text a code cell shows: each stream's text joined (as nbval joins them), then the text/plain results."""
    streams, results = {}, []
    for out in cell.get("outputs", []):
        if out["output_type"] == "stream":
            streams[out["name"]] = streams.get(out["name"], "") + "".join(out["text"])
        elif "text/plain" in out.get("data", {}):
            results.append("".join(out["data"]["text/plain"]))
    return list(streams.values()) + results


def largest_number_difference(committed: str, fresh: str) -> float | None:
    """The largest |difference| between corresponding numbers, or None when the words differ."""
    a, b = NUMBER.split(committed), NUMBER.split(fresh)
    if len(a) != len(b) or any(" ".join(x.split()) != " ".join(y.split()) for x, y in zip(a[::2], b[::2])):
        return None
    return max((abs(float(x) - float(y)) for x, y in zip(a[1::2], b[1::2])), default=0.0)


def execute(notebook: Path, env: dict, out_dir: Path) -> tuple[Path | None, float, str]:
    """Run `notebook` top to bottom in a fresh kernel with `env` added: the executed copy (None if a cell raised),
    the seconds taken, and the end of what nbconvert printed."""
    start = time.perf_counter()
    run = subprocess.run(
        [sys.executable, "-m", "jupyter", "nbconvert", "--to", "notebook", "--execute", "--output-dir", str(out_dir),
         "--ExecutePreprocessor.timeout=900", str(notebook)],
        capture_output=True, text=True, env={**os.environ, "FLAMINGO_DEVICE": "cpu", **env}, cwd=notebook.parent,
    )
    executed = out_dir / notebook.name if run.returncode == 0 else None
    return executed, time.perf_counter() - start, run.stderr[-2000:]


def compare(committed_path: Path, fresh_path: Path) -> list[str]:
    """One line per code cell whose text differs from the committed one (marked FAIL beyond its margin)."""
    committed = [c for c in json.loads(committed_path.read_text())["cells"] if c["cell_type"] == "code"]
    fresh = [c for c in json.loads(fresh_path.read_text())["cells"] if c["cell_type"] == "code"]
    lines = []
    for index, (old, new) in enumerate(zip(committed, fresh)):
        old_texts, new_texts = cell_texts(old), cell_texts(new)
        if old_texts == new_texts:
            continue
        margin = cell_margin(old)
        agree = len(old_texts) == len(new_texts) and all(texts_agree(a, b, margin) for a, b in zip(old_texts, new_texts))
        gaps = [largest_number_difference(a, b) for a, b in zip(old_texts, new_texts)]
        gap = "the words differ" if None in gaps or len(old_texts) != len(new_texts) else f"largest gap {max(gaps):.3g}"
        lines.append(f"  cell {index}: {'ok  ' if agree else 'FAIL'} {gap} (margin {margin or 'last digit'})")
    return lines


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("notebooks", nargs="*", type=Path, help="lessons to run (default: every lesson)")
    parser.add_argument("--setting", action="append", choices=sorted(SETTINGS), help="a setting (default: all)")
    parser.add_argument("--keep", type=Path, help="keep the executed copies in this folder (one subfolder a setting)")
    args = parser.parse_args(argv)
    notebooks = args.notebooks or sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
    failed = False
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.setting or list(SETTINGS):
            print(f"{name}: {' '.join(f'{k}={v}' for k, v in SETTINGS[name].items())}", flush=True)
            out_dir = (args.keep or Path(tmp)) / name
            out_dir.mkdir(parents=True, exist_ok=True)
            for notebook in notebooks:
                fresh, seconds, log = execute(notebook.resolve(), SETTINGS[name], out_dir)
                lines = compare(notebook, fresh) if fresh else ["  FAIL: a cell raised\n" + log]
                failed |= any("FAIL" in line for line in lines)
                print(f" {notebook.name} ({seconds:.0f} s): {'same text' if not lines else ''}", flush=True)
                for line in lines:
                    print(line, flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
