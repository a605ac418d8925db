"""Train the tiny Flamingo from the command line and write what happened to a JSON file.

    python -m flamingo_lite.train --out history.json
    python -m flamingo_lite.train --out ablation.json --no-tanh-gate --steps 300 --seed 1
    python -m flamingo_lite.train --out - | python -m json.tool      # the JSON to the standard output
    torchrun --nproc_per_node 2 -m flamingo_lite.train --out history.json   # data-parallel (tiny/distributed.py)

The run: draw the coloured-shapes data, train the language model on the text alone, freeze it, train Flamingo
(resampler and gated cross-attention blocks), caption the held-out pictures. The JSON holds `loss` (the loss at
each logged step, step 0 first, before any update), `attn_gate_tanh` and `ff_gate_tanh` (per logged step, a list
over the cross-attention layers), `heldout_caption_accuracy` (0-1), `seconds`, `config`, and a few more.
`--out` and `--save-model` are checked before any training, and every integer option has its range checked by the
parser (exit status 2 with the reason). Each file is replaced atomically: a failed write leaves an earlier file as it
was, the other output is still written, and a history that could not be written is printed on the standard output;
the exit status is then 3 and the standard error names what was not written (`flamingo_lite.options`).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import torch

from ..files import RunOutputs
from ..options import check_outputs, positive_int, positive_seconds, seed_int
from . import distributed
from .fewshot import FewShotSetup, run_from_command_line
from .model import FlamingoConfig
from .training import TrainingSetup, run_training

DEFAULTS = TrainingSetup()
MAX_THREADS = 2  # the model is too small to gain from more
DEFAULT_THREADS = min(MAX_THREADS, os.cpu_count() or 1)


def shot_counts(text: str) -> tuple[int, ...]:
    """argparse type: comma-separated numbers of shots, each 0 to the few-shot pool's size, such as 0,1,2,4."""
    most = FewShotSetup.pool_size  # each prompt draws its support pictures from the episode's pool
    try:
        shots = tuple(int(k) for k in text.split(",") if k.strip() != "")
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers such as 0,1,2,4, got {text!r}") from None
    if not shots or any(k < 0 or k > most for k in shots):
        raise argparse.ArgumentTypeError(f"expected comma-separated integers in [0, {most}] (the pool of pictures a prompt draws from), got {text!r}")
    return shots


def thread_count(text: str) -> int:
    """argparse type: a number of CPU threads, 1 to MAX_THREADS."""
    value = positive_int(text)
    if value > MAX_THREADS:
        raise argparse.ArgumentTypeError(f"expected at most {MAX_THREADS} (this model is too small to gain from more), got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m flamingo_lite.train",
        description=(
            "Train the tiny Flamingo on procedurally drawn coloured shapes: first the language model on the "
            "captions alone, then Flamingo with that language model and the vision encoder frozen. Writes the "
            "loss and tanh(gate) of every cross-attention layer at each logged step, and the held-out caption "
            "accuracy, to a JSON file."
        ),
        epilog="Example: python -m flamingo_lite.train --out history.json --steps 300 --no-tanh-gate. Exit status: 0 done; "
        "2 a bad option, nothing run; 3 the run finished but an output could not be written (the standard error names "
        "it; a history is then printed on the standard output); 1 any other failure.",
    )
    parser.add_argument(
        "--task", choices=["caption", "fewshot"], default="caption",
        help="caption (default): the coloured-shapes captioning run; fewshot: names learnt from the prompt's examples, "
        "with the shots curve (flamingo_lite.tiny.fewshot)",
    )
    parser.add_argument("--shots", type=shot_counts, default=(0, 1, 2, 4, 8, 16, 32), help=f"--task fewshot: the k of the k-shot prompts evaluated, each 0 to {FewShotSetup.pool_size} (default 0,1,2,4,8,16,32)")
    parser.add_argument(
        "--out", required=True,
        help="where to write the JSON history (parent folders are created; an earlier file is replaced only once the "
        "new one is complete), or - for the standard output (the summary line then goes to the standard error)",
    )
    parser.add_argument("--steps", type=positive_int, default=DEFAULTS.steps, help=f"Flamingo training steps (default {DEFAULTS.steps})")
    parser.add_argument(
        "--lm-steps", type=positive_int, default=DEFAULTS.lm_steps,
        help=f"steps of training the language model on text alone, before it is frozen (default {DEFAULTS.lm_steps})",
    )
    parser.add_argument("--seed", type=seed_int, default=DEFAULTS.seed, help=f"seed for data, weights and batches, 0 to 2**32 - 1 (default {DEFAULTS.seed})")
    parser.add_argument(
        "--device", choices=["cpu", "cuda"], default="cpu",
        help="where to train: cpu (default) or cuda (falls back to the CPU with a warning when no GPU is present)",
    )
    parser.add_argument(
        "--no-only-attend-immediate-media", dest="only_attend_immediate_media", action="store_false",
        help="ablation: let text attend to every picture before it, not only the one it follows (the paper: 70.7 -> 63.5)",
    )
    parser.add_argument(
        "--cross-attn-every", type=positive_int, default=FlamingoConfig.cross_attn_every,
        help="put a gated cross-attention block before every K-th language-model layer, starting at the first "
        f"(default {FlamingoConfig.cross_attn_every}: every layer; the paper: 1 for 3B, 4 for 9B, 7 for 80B)",
    )
    parser.add_argument(
        "--no-tanh-gate", dest="tanh_gate", action="store_false",
        help="ablation: gates fixed open (tanh = 1), so the blocks add their full output from the start (the paper: 70.7 -> 66.5)",
    )
    parser.add_argument(
        "--vision", choices=["pretrained", "handmade", "random"], default=FlamingoConfig.vision,
        help="the frozen vision encoder: pretrained (default; contrastively, flamingo_lite.tiny.contrastive), handmade "
        "(fixed edge filters), or random (the pretrained one's architecture at random initialisation)",
    )
    parser.add_argument("--log-every", type=positive_int, default=DEFAULTS.log_every, help=f"log loss and gates every N steps (default {DEFAULTS.log_every})")
    parser.add_argument(
        "--threads", type=thread_count, default=DEFAULT_THREADS,
        help=f"CPU threads for PyTorch, 1 to {MAX_THREADS} (default {DEFAULT_THREADS}; this model is too small to use more; on a "
        "busy machine use 1, as the lessons do, which also gives the lessons' exact numbers)",
    )
    parser.add_argument(
        "--save-model", default=None,
        help="--task fewshot: also write the trained model there (torch.save, atomically); "
        "flamingo_lite.tiny.fewshot.load_model reads it back",
    )
    parser.add_argument(
        "--many-links", action="store_true",
        help="--task fewshot: each training episode links a picture to its name with one of 9 links, 8 words or none, "
        "never the held-out template's `a` (flamingo_lite.tiny.fewshot.MANY_LINKS; benchmarks/HELDOUT.md)",
    )
    parser.add_argument(
        "--colliding-links", action="store_true",
        help="--task fewshot: the 9 links and 3 more, the, one and this, that also begin some captions "
        "(`<image> the red circle`), so only the sequence says whether a name or a caption follows "
        "(flamingo_lite.tiny.fewshot.COLLIDING_LINKS; benchmarks/HELDOUT.md)",
    )
    parser.add_argument("--no-progress", dest="progress", action="store_false", help="turn the tqdm progress bars off")
    parser.add_argument(
        "--batch-size", type=positive_int, default=DEFAULTS.batch_size,
        help=f"sequences per Flamingo training step, in all processes together under torchrun (default {DEFAULTS.batch_size})",
    )
    parser.add_argument(
        "--fsdp", action="store_true",
        help="under torchrun: shard the model with torch's fully_shard (each frozen language-model layer its own group) "
        "instead of copying it into every process (DDP)",
    )
    parser.add_argument(
        "--rendezvous-timeout", type=positive_seconds, default=distributed.RENDEZVOUS_TIMEOUT_S,
        help=f"under torchrun or another launcher: seconds to wait for MASTER_ADDR:MASTER_PORT to answer (default "
        f"{distributed.RENDEZVOUS_TIMEOUT_S:g})",
    )
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.save_model is not None and args.task != "fewshot":  # before any work: found after the run, it would lose it
        parser.error("--save-model is for --task fewshot (the captioning run does not save its model)")
    if args.many_links and args.task != "fewshot":
        parser.error("--many-links is for --task fewshot (the captioning run has no naming episodes)")
    if args.colliding_links and (args.task != "fewshot" or args.many_links):
        parser.error("--colliding-links is for --task fewshot, without --many-links (it holds those 9 links and 3 more)")
    paths = check_outputs(parser, {"--out": None if args.out == "-" else args.out, "--save-model": args.save_model})
    try:
        processes = distributed.world_size_from_environment()
        if processes > 1 and args.task != "caption":
            raise ValueError(f"--task {args.task} runs in one process; under torchrun use the default --task caption")
        if args.fsdp and processes == 1:
            raise ValueError("--fsdp shards the model across processes: start them with " + distributed.TORCHRUN.format(n=2) + " --fsdp")
        distributed.check_batch_split(args.batch_size, processes, "--batch-size")
    except ValueError as err:
        parser.error(str(err))  # exit status 2, nothing run
    torch.set_num_threads(args.threads)
    if args.task == "fewshot":
        history, summary, model_file = run_from_command_line(args, argv)
        return write_outputs(history, paths["--out"], summary, model_file, paths["--save-model"])
    setup = TrainingSetup(steps=args.steps, lm_steps=args.lm_steps, seed=args.seed, log_every=args.log_every, batch_size=args.batch_size)
    config = FlamingoConfig(
        cross_attn_every=args.cross_attn_every,
        only_attend_immediate_media=args.only_attend_immediate_media,
        tanh_gate=args.tanh_gate,
        vision=args.vision,
    )
    try:
        world = distributed.start(args.device, fsdp=args.fsdp, timeout_s=args.rendezvous_timeout)
    except distributed.RendezvousError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    try:
        _, history = run_training(setup, config, device=args.device, progress=args.progress, world=world)
    finally:
        distributed.stop(world)
    if not world.is_main:
        return 0  # the main process writes
    history["config"]["threads"] = args.threads
    summary = (
        f"held-out caption accuracy {history['heldout_caption_accuracy']:.3f}, "
        f"final loss {history['loss'][-1]:.3f}, "
        f"tanh(attn_gate) per layer {[round(g, 3) for g in history['attn_gate_tanh'][-1]]}, "
        f"{history['seconds']:.1f} s"
    )
    return write_outputs(history, paths["--out"], summary)


def write_outputs(history: dict, out: Path | None, summary: str, model_file: bytes | None = None, model_path: Path | None = None) -> int:
    """Write every output of the run, each atomically, then the one-line summary; returns the exit status.

    The JSON history goes to `out` (None: the standard output), the model file (if any) to `model_path`. A write
    that fails is named on the standard error and the other is still written; a history that could not be written
    is printed on the standard output instead. Exit status 0, or 3 (`flamingo_lite.files.NOT_WRITTEN`).
    """
    outputs = RunOutputs()
    wrote = []
    if model_file is not None and outputs.write("--save-model", model_path, model_file):
        wrote.append(str(model_path))
    text = json.dumps(history, indent=1)
    if out is None:
        print(text, flush=True)
        wrote.append("the standard output")
        history_on_stdout = True
    else:
        written = outputs.write("--out", out, text)  # printed on the standard output when it fails
        wrote += [str(out)] if written else []
        history_on_stdout = not written or out == Path("/dev/stdout")
    # the summary goes beside the JSON, never into it
    print(f"{summary}; wrote {' and '.join(wrote) or 'nothing'}", file=sys.stderr if history_on_stdout else sys.stdout)
    return outputs.exit_code()


if __name__ == "__main__":
    sys.exit(main())
