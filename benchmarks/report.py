#!/usr/bin/env python3
"""Write the recorded benchmark numbers into benchmarks/README.md as tables (it never times anything itself).

    python benchmarks/report.py                                  # benchmarks/results/cpu_fp32.json
    python benchmarks/report.py benchmarks/results/cuda_bf16.json

The tables go between the lines `<!-- results:NAME -->` and `<!-- end results:NAME -->` of the README (NAME is the
JSON file's stem, e.g. cpu_fp32); the block is added at the end if it is not there yet. `--print` prints instead.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing

from flamingo_lite.files import RunOutputs  # noqa: E402
from flamingo_lite.options import check_outputs, read_json_inputs  # noqa: E402

README = ROOT / "benchmarks" / "README.md"


def fmt(ms: float) -> str:
    return f"{ms:.1f}"


def targets(r: dict) -> list[tuple[str, str, str, bool]]:
    """Issue 5's targets: (what, measured, what the projections-only floor allows, met)."""
    out = []
    for key, label in (("sweep", ""), ("weights_only", ", gradients of the weights only")):
        rows = r.get(key, {})
        if not all(t in rows for t in ("1", "4", "32")):
            continue
        for t, goal in (("4", 2.5), ("32", 6.0)):
            s, floor = rows[t]["segments"]["speedup_vs_seed"], rows[t]["projections_only"]["speedup_vs_seed"]
            out.append((f"MaskedCrossAttention >= {goal}x faster than the seed, {t} media{label}", f"{s:.2f}x",
                        f"{floor:.2f}x", s >= goal))
        growth = rows["32"]["segments"]["median_ms"] / rows["1"]["masked"]["median_ms"]  # auto's choice at 1 and 32
        floor = rows["32"]["projections_only"]["median_ms"] / rows["1"]["projections_only"]["median_ms"]
        out.append((f"time with 32 media <= 2.5x time with 1 media{label}", f"{growth:.2f}x", f"{floor:.2f}x",
                    growth <= 2.5))
    if "32" in r.get("memory", {}):
        ratio = r["memory"]["32"]["segments_vs_seed"]
        out.append(("peak memory <= 0.5x the seed's, 32 media", f"{ratio:.2f}x", "", ratio <= 0.5))
    for name, row in r.get("modules", {}).items():
        if name.startswith("PerceiverResampler"):
            s = row["flamingo_lite"]["speedup_vs_seed"]
            out.append(("PerceiverResampler >= 1.3x faster than the seed", f"{s:.2f}x", "see below", s >= 1.3))
    return out


def tables(r: dict, name: str) -> str:
    m = r["machine"]
    device = m.get("gpu", m["cpu"])
    lines = [
        f"Recorded by `python benchmarks/bench.py` on {device} ({m['cpu_count']} cores), {m['torch_threads']} torch "
        f"thread(s), {m['clock']}, torch {m['torch']}, Python {m['python']}, {r['dtype']}, median of "
        f"{r['repeats']} interleaved repeats; load average {m['load_average'][0]} before and "
        f"{m.get('load_average_after', ['?'])[0]} after (other programs were running); {r.get('seconds', '?')} s of wall "
        "time in all.",
        "",
    ]
    if "modules" in r:
        lines += ["**Every module against flamingo-pytorch 0.1.2, forward + backward (issue 2):**", "",
                  "| module | seed ms | flamingo_lite ms | speedup |", "|---|---:|---:|---:|"]
        for mod, row in r["modules"].items():
            lines.append(f"| {mod} | {fmt(row['seed']['median_ms'])} | {fmt(row['flamingo_lite']['median_ms'])} | "
                         f"{row['flamingo_lite']['speedup_vs_seed']:.2f}x |")
        lines.append("")
    for key, title in (("sweep", "gradients of the weights and of the inputs (x and media)"),
                       ("weights_only", "gradients of the weights only"),
                       ("uneven", "markers at random places (uneven segments, text before the first media)")):
        if key not in r:
            continue
        lines += [f"**MaskedCrossAttention against the number of media, {title}:**", "",
                  "| media | seed ms | masked path ms | segment path ms | projections only ms | seed / segments | "
                  "seed / projections only |", "|---:|---:|---:|---:|---:|---:|---:|"]
        for t, row in r[key].items():
            lines.append(f"| {t} | {fmt(row['seed']['median_ms'])} | {fmt(row['masked']['median_ms'])} | "
                         f"{fmt(row['segments']['median_ms'])} | {fmt(row['projections_only']['median_ms'])} | "
                         f"{row['segments']['speedup_vs_seed']:.2f}x | {row['projections_only']['speedup_vs_seed']:.2f}x |")
        lines.append("")
    if "memory" in r:
        lines += ["**Peak memory of one forward + backward, MiB (a fresh process each; in brackets the same from "
                  "torch.profiler's allocation record):**", "",
                  "| media | seed | masked path | segment path | segment / seed |", "|---:|---:|---:|---:|---:|"]
        for t, row in r["memory"].items():
            cell = lambda impl: f"{row[impl]} ({row[impl + '_profiler']})" if impl + "_profiler" in row else f"{row[impl]}"
            lines.append(f"| {t} | {cell('seed')} | {cell('masked')} | {cell('segments')} | {row['segments_vs_seed']:.2f} |")
        lines.append("")
    if "auto" in r:
        lines += ["**Small problems (where `auto` switches paths):**", "",
                  "| problem | masked ms | segments ms | masked / segments | auto takes |", "|---|---:|---:|---:|---|"]
        for key, row in r["auto"].items():
            lines.append(f"| {key} | {fmt(row['masked']['median_ms'])} | {fmt(row['segments']['median_ms'])} | "
                         f"{row['segments']['speedup_vs_masked']:.2f} | {row['auto_takes']} |")
        lines.append("")
    if "profile" in r:
        lines += ["**Where the segment path's time goes** (torch.profiler, share of self time per operator, forward + "
                  "backward; the profiler uses the wall clock, so on a busy machine the shares move by a few points):", ""]
        for t, ops in r["profile"].items():
            shown = ", ".join(f"{o['op'].replace('aten::', '')} {o['self_share'] * 100:.1f}%" for o in ops[:6])
            lines.append(f"- {t} media: {shown}")
        lines.append("")
    if "training" in r:
        lines += ["**The training case (issue 13): gradients to the text and to the media, forward + backward; "
                  "`of floor` = projections-only time / this time, median over the paired repeats (0.9 is the "
                  "target); the compiled layer is `torch.compile(fullgraph=True)`, which takes the masked path:**", "",
                  "| media | seed ms | masked ms | segments ms | compiled ms | projections only ms | masked of floor | "
                  "segments of floor | compiled of floor | NaN contract, forward ms | compile s |",
                  "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for t, row in r["training"].items():
            comp = row.get("compiled_masked")
            lines.append(
                f"| {t} | {fmt(row['seed']['median_ms'])} | {fmt(row['masked']['median_ms'])} | "
                f"{fmt(row['segments']['median_ms'])} | {fmt(comp['median_ms']) if comp else '-'} | "
                f"{fmt(row['projections_only']['median_ms'])} | {row['masked']['of_floor']:.2f} | "
                f"{row['segments']['of_floor']:.2f} | {format(comp['of_floor'], '.2f') if comp else '-'} | "
                f"{row['nan_contract_forward_ms']:.2f} | {row.get('compile_seconds') or '-'} |")
        lines.append("")
    if "before" in r:
        lines += ["**An earlier version against this one, the training case (`--only before`; before / now > 1 means "
                  "now is faster):**", "",
                  "| media | segments before ms | segments now ms | before / now | masked before ms | masked now ms | "
                  "before / now | projections only ms |", "|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for t, row in r["before"].items():
            lines.append(
                f"| {t} | {fmt(row['before_segments']['median_ms'])} | {fmt(row['segments']['median_ms'])} | "
                f"{row['segments']['speedup_vs_before_segments']:.2f} | {fmt(row['before_masked']['median_ms'])} | "
                f"{fmt(row['masked']['median_ms'])} | {row['masked']['speedup_vs_before_masked']:.2f} | "
                f"{fmt(row['projections_only']['median_ms'])} |")
        lines.append("")
    checks = targets(r)
    if checks:
        lines += ["**Issue 5's targets on this run** (floor: the same ratio for the projections alone, the best any exact "
                  "method with these linear layers could reach):", "",
                  "| target | measured | floor | met |", "|---|---:|---:|:---:|"]
        lines += [f"| {what} | {value} | {floor} | {'yes' if ok else 'no'} |" for what, value, floor, ok in checks]
        lines.append("")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("record", nargs="?", type=Path, default=ROOT / "benchmarks" / "results" / "cpu_fp32.json",
                        help="a JSON record bench.py wrote (default benchmarks/results/cpu_fp32.json)")
    parser.add_argument("--print", dest="printing", action="store_true", help="print the tables instead of writing the README")
    args = parser.parse_args(argv)
    record = read_json_inputs(parser, {"record": args.record})["record"]  # before any work: exit status 2
    if not args.printing:
        check_outputs(parser, {"the README": README})
    name = args.record.stem
    block = tables(record, name)
    if args.printing:
        print(block)
        return 0
    start, end = f"<!-- results:{name} -->", f"<!-- end results:{name} -->"
    text = README.read_text() if README.exists() else "# Benchmarks\n"
    if start in text and end in text:
        before, rest = text.split(start, 1)
        after = rest.split(end, 1)[1]
        text = f"{before}{start}\n{block}\n{end}{after}"
    else:
        text = text.rstrip("\n") + f"\n\n## Results: {name}\n\n{start}\n{block}\n{end}\n"
    outputs = RunOutputs()
    if outputs.write("the README", README, text):  # printed on the standard output if it cannot be written
        print(f"wrote the {name} tables into benchmarks/README.md")
    return outputs.exit_code()


if __name__ == "__main__":
    sys.exit(main())
