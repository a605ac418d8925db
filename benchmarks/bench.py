#!/usr/bin/env python3
"""Time flamingo_lite against flamingo-pytorch 0.1.2 (the seed), forward + backward, on the same weights.

    python benchmarks/bench.py                      # CPU, fp32: every section, about 3-5 minutes on 2 busy cores
    python benchmarks/bench.py --only sweep         # one section: modules, sweep, weights_only, uneven, memory, profile, auto, training
    python benchmarks/bench.py --only training --threads 2 --repeats 15   # issue 13's training case, with the compiled layer
    python benchmarks/bench.py --only before --before ../old-checkout       # an earlier version against this one
    python benchmarks/bench.py --device cuda --dtype bf16 --out benchmarks/results/cuda_bf16.json   # on a GPU

Method. Each comparison builds the seed module and ours, copies the weights both ways with
`load_state_dict(strict=True)`, and then, `--repeats` times, runs one forward + backward of each in turn
(interleaved, so a burst of load from other programs hits both alike, and in reverse order every other round). It
records every time and reports the median of each, and the median of the per-repeat ratios seed / ours. With one
CPU thread (`--threads 1`, best on a shared machine) the clock is this process's CPU time, which ignores the moments
other programs hold the core; otherwise it is wall time. "Forward + backward" means `out.backward(g)` for a
fixed random g, with the gradients of every weight and of the inputs (the text x and the media) as in training,
where the earlier layers and the resampler learn too; `weights_only` repeats the cross-attention timings with
inputs that need no gradient, and `uneven` with the markers at random places (segments of every length). Peak
memory is measured in a fresh process per (module, media count), after one warm-up step: on the CPU the peak
resident set size during one forward + backward (VmHWM in /proc/self/status, reset just before by writing 5 to
/proc/self/clear_refs) minus the resident size just before it, with glibc told to map every block of 64 KiB or
more on its own (MALLOC_MMAP_THRESHOLD_), so that freed tensors leave the resident size at once and it follows
the live tensors; on CUDA `torch.cuda.max_memory_allocated` minus the memory allocated before it. On the CPU a
second figure comes from torch.profiler's record of every allocation and free (profile_memory=True), replayed in
time order.

Results go to a JSON file (`--out`, default benchmarks/results/cpu_fp32.json) with the machine's description;
`python benchmarks/plot.py` draws time against the number of media from it, and `python benchmarks/report.py` writes
its tables into benchmarks/README.md.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing

import torch  # noqa: E402
from flamingo_pytorch import flamingo_pytorch as seed  # noqa: E402

import flamingo_lite as fl  # noqa: E402
from flamingo_lite.files import RunOutputs  # noqa: E402
from flamingo_lite.options import check_inputs, check_outputs, positive_int, read_json_inputs  # noqa: E402

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}

# the sizes of issue 5: batch 2, 1024 text tokens, 64 latents per media, dim 512, 8 heads of 64
XATTN = dict(batch=2, text=1024, latents=64, dim=512, heads=8, dim_head=64)
# the resampler of issue 5: batch 4, 4 media, 256 patches, 64 latents, depth 2, dim 512
RESAMPLER = dict(batch=4, media=4, patches=256, latents=64, depth=2, dim=512)
SWEEP_MEDIA = [1, 2, 4, 8, 16, 32]


# ----------------------------------------------------------------------------------------------- the machine
def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine(device: torch.device) -> dict:
    info = dict(
        python=platform.python_version(),
        torch=torch.__version__,
        cpu=cpu_name(),
        cpu_count=os.cpu_count(),
        torch_threads=torch.get_num_threads(),
        clock="process CPU time" if device.type == "cpu" and torch.get_num_threads() == 1 else "wall time",
        platform=platform.platform(),
        load_average=[round(x, 2) for x in os.getloadavg()],
    )
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


# ----------------------------------------------------------------------------------------------- timing
def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def make_step(module, inputs, grad_out):
    """One forward + backward; inputs that need gradients get fresh ones each time."""

    def step():
        module.zero_grad(set_to_none=True)
        for t in inputs:
            if isinstance(t, torch.Tensor):
                t.grad = None
        out = module(*inputs)
        out.backward(grad_out)

    return step


def clock(device: torch.device) -> float:
    """Seconds on the clock that counts this work best.

    On the CPU with one thread: the CPU time of this process, which does not count the moments when other
    programs have the core (wall time on a shared machine mostly measures the neighbours). Otherwise wall time.
    """
    if device.type == "cpu" and torch.get_num_threads() == 1:
        return time.process_time()
    return time.perf_counter()


def interleaved(steps: dict, repeats: int, device: torch.device, warmup: int = 1) -> dict:
    """Time each step `repeats` times, taking turns (in reverse order every other round); every time in ms."""
    for step in steps.values():
        for _ in range(warmup):
            step()
    sync(device)
    times = {name: [] for name in steps}
    names = list(steps)
    for round_ in range(repeats):
        for name in names if round_ % 2 == 0 else names[::-1]:
            sync(device)
            start = clock(device)
            steps[name]()
            sync(device)
            times[name].append((clock(device) - start) * 1e3)
    return times


def summarize(times: dict, baseline: str = "seed") -> dict:
    """Median ms of each, and the median over repeats of baseline / each (paired, same moment)."""
    out = {name: dict(median_ms=round(statistics.median(ts), 2), times_ms=[round(t, 2) for t in ts]) for name, ts in times.items()}
    if baseline in times:
        for name, ts in times.items():
            if name != baseline:
                ratios = [b / t for b, t in zip(times[baseline], ts)]
                out[name][f"speedup_vs_{baseline}"] = round(statistics.median(ratios), 2)
    return out


# ----------------------------------------------------------------------------------------------- the modules
def twin(reference, ours):
    """Copy the seed's weights into ours, and back (both ways, strict), so both compute the same function."""
    ours.load_state_dict(reference.state_dict(), strict=True)
    reference.load_state_dict(ours.state_dict(), strict=True)
    return reference, ours


def xattn_inputs(num_media: int, device, dtype, grad_inputs=True, gen_seed=0, uneven=False):
    c = XATTN
    gen = torch.Generator().manual_seed(gen_seed)
    x = torch.randn(c["batch"], c["text"], c["dim"], generator=gen).to(device, dtype)  # (b, n, d)
    media = torch.randn(c["batch"], num_media, c["latents"], c["dim"], generator=gen).to(device, dtype)  # (b, t, m, d)
    locations = torch.zeros(c["batch"], c["text"], dtype=torch.bool)  # (b, n)
    if uneven:  # markers at random places: segments of every length, and text before the first media
        for row in range(c["batch"]):
            locations[row, torch.randperm(c["text"], generator=gen)[:num_media]] = True
    else:  # one <image> marker at the start of each of num_media equal stretches of text
        locations[:, torch.linspace(0, c["text"] - 1, num_media + 1)[:-1].long()] = True
    grad_out = torch.randn(c["batch"], c["text"], c["dim"], generator=gen).to(device, dtype)  # (b, n, d)
    x.requires_grad_(grad_inputs)
    media.requires_grad_(grad_inputs)
    return (x, media, locations.to(device)), grad_out


def xattn_modules(device, dtype, gated=False):
    c = XATTN
    kwargs = dict(dim=c["dim"], dim_head=c["dim_head"], heads=c["heads"])
    torch.manual_seed(0)
    cls_seed, cls_ours = (seed.GatedCrossAttentionBlock, fl.GatedCrossAttentionBlock) if gated else (
        seed.MaskedCrossAttention, fl.MaskedCrossAttention)
    reference = cls_seed(**kwargs)
    masked, segments = cls_ours(**kwargs), cls_ours(**kwargs)
    twin(reference, masked)
    twin(reference, segments)
    if gated:
        with torch.no_grad():
            reference.attn_gate.fill_(0.5)  # open the gates so every part has a gradient
            reference.ff_gate.fill_(0.5)
        masked.load_state_dict(reference.state_dict())
        segments.load_state_dict(reference.state_dict())
    (masked.attn if gated else masked).attention_path = "masked"
    (segments.attn if gated else segments).attention_path = "segments"
    return [m.to(device, dtype) for m in (reference, masked, segments)]


class ProjectionsOnly(torch.nn.Module):
    """The layer norm and the three linear layers of a MaskedCrossAttention, without the attention between them.

    Every exact implementation computes at least these (the keys and values of every media, the queries and the
    output of every token), so its time is a floor: no way of doing the attention can beat it.
    """

    def __init__(self, module):
        super().__init__()
        self.module = module

    def forward(self, x, media, media_locations=None):
        mod = self.module
        q = mod.to_q(mod.norm(x))  # (b, n, h*e)
        k, v = mod.to_kv(media).chunk(2, dim=-1)  # 2 x (b, t, m, h*e)
        mixed = q + (k.sum(dim=(1, 2)) + v.sum(dim=(1, 2))).unsqueeze(1)  # (b, n, h*e): gradients reach k and v
        return mod.to_out(mixed)  # (b, n, d)


def section_sweep(args, device, dtype, grad_inputs=True, media_counts=SWEEP_MEDIA, uneven=False):
    """MaskedCrossAttention: time against the number of media, seed vs the masked path vs the segment path."""
    results = {}
    for t in media_counts:
        reference, masked, segments = xattn_modules(device, dtype)
        inputs, grad_out = xattn_inputs(t, device, dtype, grad_inputs, uneven=uneven)
        steps = dict(
            seed=make_step(reference, inputs, grad_out),
            masked=make_step(masked, inputs, grad_out),
            segments=make_step(segments, inputs, grad_out),
            projections_only=make_step(ProjectionsOnly(segments), inputs, grad_out),
        )
        results[str(t)] = summarize(interleaved(steps, args.repeats, device))
        r = results[str(t)]
        print(f"  media={t:3d}  seed {r['seed']['median_ms']:7.1f} ms  masked {r['masked']['median_ms']:7.1f} ms "
              f"({r['masked']['speedup_vs_seed']:.2f}x)  segments {r['segments']['median_ms']:7.1f} ms "
              f"({r['segments']['speedup_vs_seed']:.2f}x)  projections only {r['projections_only']['median_ms']:7.1f} ms "
              f"({r['projections_only']['speedup_vs_seed']:.2f}x)", flush=True)
    return results


def section_modules(args, device, dtype):
    """Every public module against the seed (issue 2's benchmark), fwd + bwd, inputs needing gradients."""
    results = {}
    gen = torch.Generator().manual_seed(0)
    rnd = lambda *shape: torch.randn(*shape, generator=gen).to(device, dtype).requires_grad_(True)
    c, r = XATTN, RESAMPLER

    def add(name, reference, ours, inputs, grad_out):
        twin(reference, ours)
        reference, ours = reference.to(device, dtype), ours.to(device, dtype)
        steps = dict(seed=make_step(reference, inputs, grad_out), flamingo_lite=make_step(ours, inputs, grad_out))
        results[name] = summarize(interleaved(steps, args.repeats, device))
        s = results[name]
        print(f"  {name:44s} seed {s['seed']['median_ms']:8.1f} ms  flamingo_lite {s['flamingo_lite']['median_ms']:8.1f} ms "
              f"({s['flamingo_lite']['speedup_vs_seed']:.2f}x)", flush=True)

    torch.manual_seed(0)
    add(f"FeedForward (b={c['batch']}, n={c['text']}, d={c['dim']})",
        seed.FeedForward(c["dim"]), fl.FeedForward(c["dim"]),
        (rnd(c["batch"], c["text"], c["dim"]),), rnd(c["batch"], c["text"], c["dim"]).detach())
    shape_x = (r["batch"], r["media"], r["patches"], r["dim"])
    shape_l = (r["batch"], r["media"], r["latents"], r["dim"])
    add(f"PerceiverAttention (b={r['batch']}, t={r['media']}, n={r['patches']}, L={r['latents']})",
        seed.PerceiverAttention(dim=r["dim"]), fl.PerceiverAttention(dim=r["dim"]),
        (rnd(*shape_x), rnd(*shape_l)), rnd(*shape_l).detach())
    add(f"PerceiverResampler (b={r['batch']}, t={r['media']}, n={r['patches']}, L={r['latents']}, depth={r['depth']})",
        seed.PerceiverResampler(dim=r["dim"], depth=r["depth"], num_latents=r["latents"]),
        fl.PerceiverResampler(dim=r["dim"], depth=r["depth"], num_latents=r["latents"]),
        (rnd(*shape_x),), rnd(*shape_l).detach())
    for gated in (False, True):
        for t in (4, 32):
            reference, masked, segments = xattn_modules(device, dtype, gated=gated)
            inputs, grad_out = xattn_inputs(t, device, dtype)
            ours = masked
            (ours.attn if gated else ours).attention_path = "auto"
            name = f"{'GatedCrossAttentionBlock' if gated else 'MaskedCrossAttention'} (t={t})"
            steps = dict(seed=make_step(reference, inputs, grad_out), flamingo_lite=make_step(ours, inputs, grad_out))
            results[name] = summarize(interleaved(steps, args.repeats, device))
            s = results[name]
            print(f"  {name:44s} seed {s['seed']['median_ms']:8.1f} ms  flamingo_lite {s['flamingo_lite']['median_ms']:8.1f} ms "
                  f"({s['flamingo_lite']['speedup_vs_seed']:.2f}x)", flush=True)
    return results


def section_auto(args, device, dtype):
    """Small problems: the two paths cost alike there, so "auto" needs no size threshold."""
    results = {}

    for b, n, t, m in [(1, 64, 2, 64), (1, 128, 4, 16), (1, 256, 4, 64), (2, 512, 8, 64)]:
        torch.manual_seed(0)
        masked = fl.MaskedCrossAttention(dim=512, attention_path="masked").to(device, dtype)
        segments = fl.MaskedCrossAttention(dim=512, attention_path="segments").to(device, dtype)
        segments.load_state_dict(masked.state_dict())
        gen = torch.Generator().manual_seed(0)
        x = torch.randn(b, n, 512, generator=gen).to(device, dtype).requires_grad_(True)
        media = torch.randn(b, t, m, 512, generator=gen).to(device, dtype).requires_grad_(True)
        locations = torch.zeros(b, n, dtype=torch.bool)
        locations[:, torch.linspace(0, n - 1, t + 1)[:-1].long()] = True
        grad_out = torch.randn(b, n, 512, generator=gen).to(device, dtype)
        steps = dict(masked=make_step(masked, (x, media, locations.to(device)), grad_out),
                     segments=make_step(segments, (x, media, locations.to(device)), grad_out))
        s = summarize(interleaved(steps, args.repeats, device), baseline="masked")
        key = f"b={b} n={n} t={t} m={m} scores={b * n * t * m}"
        auto = fl.MaskedCrossAttention(dim=512).to(device, dtype)
        s["auto_takes"] = "segments" if auto.uses_segment_path(x, media, locations.to(device)) else "masked"
        results[key] = s
        print(f"  {key:40s} masked {s['masked']['median_ms']:7.2f} ms  segments {s['segments']['median_ms']:7.2f} ms "
              f"(masked/segments {s['segments']['speedup_vs_masked']:.2f})  auto: {s['auto_takes']}", flush=True)
    return results


# ----------------------------------------------------------------------------------------------- memory
def status_kib(field: str) -> int:
    """A memory figure of this process from /proc/self/status (Linux), in KiB: VmRSS now, VmHWM its peak."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status: the CPU memory measurement needs Linux")


def reset_peak_rss() -> None:
    """Make VmHWM start again from the current resident size (Linux: write 5 to /proc/self/clear_refs)."""
    Path("/proc/self/clear_refs").write_text("5")


def memory_child(impl: str, num_media: int, device, dtype) -> None:
    """In a fresh process: the extra peak memory of one forward + backward, printed as JSON."""
    reference, masked, segments = xattn_modules(device, dtype)
    module = dict(seed=reference, masked=masked, segments=segments)[impl]
    inputs, grad_out = xattn_inputs(num_media, device, dtype)
    step = make_step(module, inputs, grad_out)
    if device.type == "cuda":
        step()  # CUDA kernels and workspaces once, so that only the step's tensors count
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        step()
        torch.cuda.synchronize(device)
        peak = torch.cuda.max_memory_allocated(device) - before
    else:
        step()  # once, so that lazily made buffers and the allocator's pools exist before measuring
        module.zero_grad(set_to_none=True)
        for t in inputs:
            t.grad = None
        reset_peak_rss()
        before = status_kib("VmRSS")
        step()
        peak = (status_kib("VmHWM") - before) * 1024
    row = dict(impl=impl, media=num_media, peak_mib=round(peak / 2**20, 1))
    if device.type == "cpu":
        module.zero_grad(set_to_none=True)
        for t in inputs:
            t.grad = None
        row["profiler_peak_mib"] = round(profiled_peak_bytes(step) / 2**20, 1)
    print(json.dumps(row))


def profiled_peak_bytes(step) -> int:
    """A second measurement: torch.profiler's record of every allocation and free, replayed in time order."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step()
    live = peak = 0
    for event in sorted(prof.events(), key=lambda e: e.time_range.start):
        # an operator's own allocations minus its own frees; "[memory]" events are frees outside any operator
        live += event.cpu_memory_usage if event.name == "[memory]" else event.self_cpu_memory_usage
        peak = max(peak, live)
    return peak


def section_memory(args, device, dtype):
    results = {}
    for t in (4, 32):
        row = {}
        for impl in ("seed", "masked", "segments"):
            cmd = [sys.executable, __file__, "--memory-child", impl, str(t), "--device", str(device), "--dtype", args.dtype,
                   "--threads", str(torch.get_num_threads())]
            # glibc: every block of 64 KiB or more gets its own mapping, returned to the system when freed, so the
            # resident size follows the live tensors instead of the allocator's cached heap
            env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536")
            out = subprocess.run(cmd, capture_output=True, text=True, check=True, env=env).stdout.strip().splitlines()[-1]
            child = json.loads(out)
            row[impl] = child["peak_mib"]
            if "profiler_peak_mib" in child:
                row[f"{impl}_profiler"] = child["profiler_peak_mib"]
        row["segments_vs_seed"] = round(row["segments"] / row["seed"], 3)
        results[str(t)] = row
        print(f"  media={t:3d}  peak MiB: seed {row['seed']:8.1f}  masked {row['masked']:8.1f}  segments "
              f"{row['segments']:8.1f}  (segments/seed {row['segments_vs_seed']:.2f})", flush=True)
        if "seed_profiler" in row:
            print(f"             profiler: seed {row['seed_profiler']:8.1f}  masked {row['masked_profiler']:8.1f}  "
                  f"segments {row['segments_profiler']:8.1f}", flush=True)
    return results


# ----------------------------------------------------------------------------------------------- profile
def nan_contract_ms(num_media: int, device, dtype, repeats: int) -> float:
    """Median ms of the NaN contract's own work on the segment path at these sizes, forward only: the float32
    sums over the queries, keys and values of every chunk and the `where` over its output."""
    from flamingo_lite.attention import nan_contract, settle_rows

    c = XATTN
    chunks, slots = c["batch"] * num_media, c["text"] // num_media  # one chunk a media: equal segments
    q = torch.randn(chunks, c["heads"], slots, c["dim_head"], device=device, dtype=dtype)  # (c, h, s, e)
    kv = torch.randn(chunks, c["heads"], c["latents"], c["dim_head"], device=device, dtype=dtype)  # (c, h, m, e)

    def contract():
        poisoned, _, _ = nan_contract(q, kv, kv)  # (c, s)
        settle_rows(q, poisoned=poisoned)  # (c, h, s, e)

    return summarize(interleaved(dict(contract=contract), repeats, device))["contract"]["median_ms"]


def section_training(args, device, dtype, media_counts=(4, 32)):
    """The training case: gradients to the text and to the media (the resampler learns), fwd + bwd, issue 13's sizes.

    Seed, our masked and segment paths, the projections-only floor and, when torch.compile works here, our layer
    compiled (fullgraph, "auto" takes the masked path under compile), all interleaved in one process. `of_floor`
    is (seed / ours) / (seed / projections only) = projections-only time / our time, per repeat, median.
    """
    results = {}
    for t in media_counts:
        reference, masked, segments = xattn_modules(device, dtype)
        inputs, grad_out = xattn_inputs(t, device, dtype, grad_inputs=True)
        steps = dict(
            seed=make_step(reference, inputs, grad_out),
            masked=make_step(masked, inputs, grad_out),
            segments=make_step(segments, inputs, grad_out),
            projections_only=make_step(ProjectionsOnly(segments), inputs, grad_out),
        )
        compile_seconds = None
        if not args.no_compile:
            compiled_module = fl.MaskedCrossAttention(dim=XATTN["dim"], dim_head=XATTN["dim_head"], heads=XATTN["heads"])
            compiled_module.load_state_dict(masked.state_dict())
            compiled_module = compiled_module.to(device, dtype)
            compiled = torch.compile(compiled_module, fullgraph=True)
            start = time.perf_counter()
            make_step(compiled, inputs, grad_out)()  # compiles forward and backward
            compile_seconds = round(time.perf_counter() - start, 1)
            steps["compiled_masked"] = make_step(compiled, inputs, grad_out)
        times = interleaved(steps, args.repeats, device)
        r = summarize(times)
        for name in steps:
            if name not in ("seed", "projections_only"):
                r[name]["of_floor"] = round(statistics.median(
                    [p / o for p, o in zip(times["projections_only"], times[name])]), 3)
        r["compile_seconds"] = compile_seconds
        r["nan_contract_forward_ms"] = nan_contract_ms(t, device, dtype, args.repeats)
        results[str(t)] = r
        line = "  ".join(f"{name} {r[name]['median_ms']:.1f} ms" + (f" ({r[name]['of_floor']:.2f} of floor)"
                         if "of_floor" in r[name] else "") for name in steps)
        print(f"  media={t:3d}  {line}  contract {r['nan_contract_forward_ms']:.2f} ms", flush=True)
    return results


def load_package(tree: str, name: str = "flamingo_lite_before"):
    """Import the `flamingo_lite` package found under `tree` (another checkout) as `name`, beside ours."""
    import importlib.util

    init = Path(tree) / "flamingo_lite" / "__init__.py"
    if not init.exists():
        raise SystemExit(f"--before {tree}: no flamingo_lite/__init__.py there")
    spec = importlib.util.spec_from_file_location(name, init, submodule_search_locations=[str(init.parent)])
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def section_before(args, device, dtype, media_counts=(4, 32)):
    """The training case, an earlier version of the package (`--before TREE`) against this one, in one process:
    what this version's changes (the NaN contract, the checks, the gathers) cost or save, as before / now."""
    old = load_package(args.before)
    results = {}
    for t in media_counts:
        reference, masked, segments = xattn_modules(device, dtype)
        kwargs = dict(dim=XATTN["dim"], dim_head=XATTN["dim_head"], heads=XATTN["heads"])
        old_masked = old.MaskedCrossAttention(**kwargs, attention_path="masked")
        old_segments = old.MaskedCrossAttention(**kwargs, attention_path="segments")
        for m in (old_masked, old_segments):
            m.load_state_dict(masked.state_dict())
        inputs, grad_out = xattn_inputs(t, device, dtype, grad_inputs=True)
        steps = dict(
            before_segments=make_step(old_segments.to(device, dtype), inputs, grad_out),
            segments=make_step(segments, inputs, grad_out),
            before_masked=make_step(old_masked.to(device, dtype), inputs, grad_out),
            masked=make_step(masked, inputs, grad_out),
            projections_only=make_step(ProjectionsOnly(segments), inputs, grad_out),
        )
        times = interleaved(steps, args.repeats, device)
        r = summarize(times, baseline="before_segments")
        r["masked"]["speedup_vs_before_masked"] = round(statistics.median(
            [b / o for b, o in zip(times["before_masked"], times["masked"])]), 2)
        for name in ("before_segments", "segments", "before_masked", "masked"):
            r[name]["of_floor"] = round(statistics.median(
                [p / o for p, o in zip(times["projections_only"], times[name])]), 3)
        results[str(t)] = r
        print(f"  media={t:3d}  " + "  ".join(f"{k} {r[k]['median_ms']:.1f} ms" for k in steps)
              + f"  segments before/now {r['segments']['speedup_vs_before_segments']:.2f}"
              + f"  masked before/now {r['masked']['speedup_vs_before_masked']:.2f}", flush=True)
    return results


def section_profile(args, device, dtype):
    """Where the time of our MaskedCrossAttention goes (segment path, default auto choice), per operator."""
    from torch.profiler import ProfilerActivity, profile

    results = {}
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    for t in (4, 32):
        _, _, segments = xattn_modules(device, dtype)
        inputs, grad_out = xattn_inputs(t, device, dtype)
        step = make_step(segments, inputs, grad_out)
        step()
        sync(device)
        with profile(activities=activities) as prof:
            for _ in range(3):
                step()
            sync(device)
        sort = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"  # GPU: kernel time
        table = prof.key_averages().table(sort_by=sort, row_limit=15, max_name_column_width=48)
        events = sorted(prof.key_averages(), key=lambda e: getattr(e, sort), reverse=True)
        total = sum(getattr(e, sort) for e in events) or 1
        results[str(t)] = [dict(op=e.key, self_share=round(getattr(e, sort) / total, 3), calls=e.count // 3)
                           for e in events[:12]]
        print(f"  segment path, media={t}: share of {sort}")
        for e in results[str(t)][:8]:
            print(f"    {e['self_share'] * 100:5.1f}%  {e['op']}  ({e['calls']} calls per step)")
        args.outputs.write("the profile table", Path(args.out).parent / f"profile_{device.type}_{args.dtype}_media{t}.txt", table)
    return results


# ----------------------------------------------------------------------------------------------- main
SECTIONS = ["modules", "sweep", "weights_only", "uneven", "memory", "profile", "auto", "training", "before"]


def device_name(text: str) -> torch.device:
    """argparse type: a device torch knows (cpu, cuda, cuda:1, ...) that this machine has."""
    try:
        device = torch.device(text)
    except RuntimeError:
        raise argparse.ArgumentTypeError(f"expected a device such as cpu or cuda, got {text!r}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise argparse.ArgumentTypeError(f"{text!r} asked for, but torch sees no CUDA device here")
    return device


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", type=device_name, default=torch.device("cpu"))
    parser.add_argument("--dtype", default="fp32", choices=sorted(DTYPES))
    parser.add_argument("--repeats", type=positive_int, default=5)
    parser.add_argument("--only", nargs="*", default=None, choices=SECTIONS)
    parser.add_argument("--before", metavar="TREE", help="for --only before: a checkout of an earlier version, e.g. "
                        "made by `git worktree add TREE <commit>`")
    parser.add_argument("--no-compile", action="store_true", help="leave the compiled layer out of the training section")
    parser.add_argument("--out", default=None)
    parser.add_argument("--threads", type=positive_int, default=None,
                        help="torch.set_num_threads (default: torch's choice); 1 gives steadier ratios on a shared machine")
    parser.add_argument("--memory-child", nargs=2, metavar=("IMPL", "MEDIA"), help=argparse.SUPPRESS)
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    device, dtype = args.device, DTYPES[args.dtype]
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.memory_child:
        memory_child(args.memory_child[0], int(args.memory_child[1]), device, dtype)
        return 0
    # before minutes of timing: every option and path that could fail later
    args.out = args.out or str(ROOT / "benchmarks" / "results" / f"{device.type}_{args.dtype}.json")
    check_outputs(parser, {"--out": args.out})
    sections = args.only or [name for name in SECTIONS if name != "before"]
    if "before" in sections:
        if not args.before:
            parser.error("--only before needs --before TREE, a checkout of the earlier version")
        check_inputs(parser, {"--before": Path(args.before) / "flamingo_lite" / "__init__.py"})
    previous = read_json_inputs(parser, {"--out": args.out})["--out"] if Path(args.out).exists() else {}  # extended
    args.outputs = RunOutputs()
    start = time.time()
    record = dict(previous, machine=machine(device), device=str(device), dtype=args.dtype, repeats=args.repeats,
                  sizes=dict(cross_attention=XATTN, resampler=RESAMPLER))
    record.setdefault("section_seconds", {})
    for name in sections:
        print(f"[{name}]", flush=True)
        section_start = time.time()
        if name == "modules":
            record["modules"] = section_modules(args, device, dtype)
        elif name == "sweep":
            record["sweep"] = section_sweep(args, device, dtype)
        elif name == "weights_only":
            record["weights_only"] = section_sweep(args, device, dtype, grad_inputs=False, media_counts=[1, 4, 32])
        elif name == "uneven":
            record["uneven"] = section_sweep(args, device, dtype, media_counts=[8, 32], uneven=True)
        elif name == "memory":
            record["memory"] = section_memory(args, device, dtype)
        elif name == "profile":
            record["profile"] = section_profile(args, device, dtype)
        elif name == "auto":
            record["auto"] = section_auto(args, device, dtype)
        elif name == "training":
            record["training"] = section_training(args, device, dtype)
        elif name == "before":
            record["before"] = section_before(args, device, dtype)
        record["section_seconds"][name] = round(time.time() - section_start, 1)
    record["machine"]["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
    record["seconds"] = round(sum(record["section_seconds"].values()), 1)
    if args.outputs.write("--out", args.out, json.dumps(record, indent=1) + "\n"):
        print(f"wrote {os.path.relpath(args.out, ROOT)} in {round(time.time() - start, 1)} s")
    return args.outputs.exit_code()


if __name__ == "__main__":
    sys.exit(main())
