"""What every command line of the project checks before any work: its integer options and its output paths.

`python -m flamingo_lite.train`, `python -m flamingo_lite.tiny.contrastive` and the scripts in benchmarks/ share
these, so one mistake gets one answer everywhere: an integer option out of its range, or an output that cannot be
written, is a usage error (exit status 2, the reason on the standard error) found by the parser, before any training
or timing starts. Exit statuses: 0 done; 1 the run failed; 2 a bad command line, nothing run; 3 the run finished but
some output could not be written (`flamingo_lite.files.RunOutputs` names each one).

    parser.add_argument("--seed", type=seed_int, default=0)
    parser.add_argument("--steps", type=positive_int, default=800)
    args = parser.parse_args(argv)
    paths = check_outputs(parser, {"--out": args.out, "--save-model": args.save_model})  # None: not asked for
"""
from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from .files import check_output_path
from .validation import MAX_SEED

__all__ = ["check_inputs", "check_outputs", "int_in_range", "non_negative_int", "positive_int", "positive_seconds", "read_json_inputs", "seed_int"]


def int_in_range(low: int, high: int | None = None, *, name: str = "int"):
    """An argparse type: an integer from `low` to `high` (None: no upper bound), else a usage error saying the range."""
    if high is not None:
        wanted = f"an integer from {low} to {high}"
    else:
        wanted = {0: "an integer >= 0", 1: "a positive integer"}.get(low, f"an integer >= {low}")

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {wanted}, got {text!r}") from None
        if value < low or (high is not None and value > high):
            raise argparse.ArgumentTypeError(f"expected {wanted}, got {value}")
        return value

    parse.__name__ = name  # argparse names the type by it in some messages
    return parse


positive_int = int_in_range(1, name="positive_int")
non_negative_int = int_in_range(0, name="non_negative_int")
seed_int = int_in_range(0, MAX_SEED, name="seed")  # numpy's largest seed is 2**32 - 1


def positive_seconds(text: str) -> float:
    """An argparse type: a finite number of seconds above 0, else a usage error saying so."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds above 0, got {text!r}") from None
    if not (0 < value < float("inf")):
        raise argparse.ArgumentTypeError(f"expected a number of seconds above 0, got {value}")
    return value


def check_outputs(parser: argparse.ArgumentParser, paths: dict) -> dict:
    """{option: path or None} -> {option: Path or None}, every path checked by `check_output_path`; else exit 2.

    None is an output not asked for (or the standard output, which the caller writes itself).

    Also refused: two options naming the same file (the second write would replace the first).
    """
    checked, seen = {}, {}
    try:
        for option, path in paths.items():
            checked[option] = None if path is None else check_output_path(path, option)
            if path is None or (Path(path).exists() and not Path(path).is_file()):
                continue  # not asked for, or a device such as /dev/null, which takes any number of writes
            same = os.path.realpath(path)
            if same in seen:
                raise ValueError(f"{seen[same]} and {option} both name {str(path)!r}: the second would replace the first")
            seen[same] = option
    except ValueError as err:
        parser.error(str(err))  # exit status 2, before any work
    return checked


def check_inputs(parser: argparse.ArgumentParser, paths: dict) -> dict:
    """{option: path} -> {option: Path}, each a file this user may read; else exit 2 with the reason."""
    checked = {}
    for option, path in paths.items():
        path = Path(path)
        if not path.is_file():
            parser.error(f"{option} {str(path)!r} is {'a folder' if path.is_dir() else 'missing'}: expected a file")
        if not os.access(path, os.R_OK):
            parser.error(f"{option} {str(path)!r} cannot be read: no permission")
        checked[option] = path
    return checked


def read_json_inputs(parser: argparse.ArgumentParser, paths: dict) -> dict:
    """{option: path} -> {option: the JSON object in that file}; a missing file or one without a JSON object: exit 2."""
    records = {}
    for option, path in check_inputs(parser, paths).items():
        try:
            records[option] = json.loads(path.read_text())
        except (ValueError, UnicodeDecodeError) as err:
            parser.error(f"{option} {str(path)!r} holds no JSON record ({err.__class__.__name__}: {err})")
        if not isinstance(records[option], dict):
            parser.error(f"{option} {str(path)!r} holds a JSON {type(records[option]).__name__}, not a record (an object)")
    return records
