#!/usr/bin/env python3
"""How long each lesson takes a learner, estimated from what it asks of them.

    python tools/lesson_times.py           print the estimate of every lesson, and the total
    python tools/lesson_times.py --check   exit 1 (and say where) if a lesson's header, the README's lesson table
                                           or the instructor guide states another time than the estimate

A lesson's time is the sum of four parts, each counted in the lesson file itself:

- **reading the prose**: the words of its markdown cells at 180 a minute (adults read non-fiction silently at about
  240 words a minute, Brysbaert 2019; prose with shapes and formulas is read more slowly);
- **reading the code it gives**: the non-comment lines of its code cells that the learner does not write, at 20 a
  minute (read once, run, the output looked at);
- **writing the learner's code**: the non-comment lines between `### BEGIN SOLUTION` and `### END SOLUTION`, at one
  minute a line, which covers thinking, running the check and one fix;
- **waiting for the cells**: the run time the committed notebook records (nbclient's per-cell timestamps).

The constants are the course's reading of a learner who knows PyTorch basics, not a measurement of people; they are
here so that every time the course states is computed the same way, and so that a lesson that grows shows it.

A section whose heading starts with "Going further" (and everything under it, to the next heading of its level or
above) is counted apart: the core path skips reading it, though its cells still run. Times are rounded to 5 minutes.
"""
from __future__ import annotations

import argparse
import json
import re
import sys
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from make_student_notebooks import BEGIN, END, LESSON_GLOB, LESSONS_DIR, ROOT, SOLUTION_TAG  # one reading of a lesson

README = ROOT / "README.md"
GUIDE = ROOT / "docs" / "teaching.md"

PROSE_WORDS_PER_MINUTE = 180
GIVEN_LINES_PER_MINUTE = 20
MINUTES_PER_WRITTEN_LINE = 1.0
ROUND_TO = 5

WORD = re.compile(r"\w+")
HEADING = re.compile(r"^(#{1,6})\s+(.*)$")
GOING_FURTHER = re.compile(r"^going further\b", re.I)


@dataclass
class Counts:
    """What one lesson asks of a learner, split into the core path and its going-further sections."""

    words: int = 0
    given_lines: int = 0
    written_lines: int = 0
    further_words: int = 0
    further_given_lines: int = 0
    run_seconds: float = 0.0

    def core_minutes(self) -> float:
        return (self.words / PROSE_WORDS_PER_MINUTE + self.given_lines / GIVEN_LINES_PER_MINUTE
                + self.written_lines * MINUTES_PER_WRITTEN_LINE + self.run_seconds / 60)

    def further_minutes(self) -> float:
        return self.further_words / PROSE_WORDS_PER_MINUTE + self.further_given_lines / GIVEN_LINES_PER_MINUTE


def rounded(minutes: float) -> int:
    """Minutes to the nearest ROUND_TO (halves up), at least ROUND_TO."""
    return max(ROUND_TO, ROUND_TO * int(minutes / ROUND_TO + 0.5))


def _code_lines(lines: list[str]) -> int:
    return sum(1 for line in lines if line.strip() and not line.strip().startswith("#"))


def _run_seconds(cell: dict) -> float:
    stamps = cell.get("metadata", {}).get("execution", {})
    start, end = stamps.get("iopub.execute_input"), stamps.get("shell.execute_reply")
    if not (start and end):
        return 0.0
    parse = lambda stamp: datetime.fromisoformat(stamp.replace("Z", "+00:00"))  # noqa: E731
    return max(0.0, (parse(end) - parse(start)).total_seconds())


def count(notebook: dict) -> Counts:
    """Count the words, the given and the written lines, and the run time of a lesson notebook (its JSON)."""
    counts = Counts()
    further_level = None  # the level of the open "Going further" heading, None outside one
    for cell in notebook["cells"]:
        text = "".join(cell["source"])
        if cell["cell_type"] == "markdown":
            for line in text.splitlines():
                heading = HEADING.match(line)
                if heading:
                    level = len(heading.group(1))
                    if further_level is not None and level <= further_level:
                        further_level = None
                    if further_level is None and GOING_FURTHER.match(heading.group(2).strip("*_ ")):
                        further_level = level
                words = len(WORD.findall(line))
                if further_level is None:
                    counts.words += words
                else:
                    counts.further_words += words
            continue
        if cell["cell_type"] != "code":
            continue
        counts.run_seconds += _run_seconds(cell)
        lines = text.splitlines()
        written, given, inside = [], [], False
        is_solution = SOLUTION_TAG in cell.get("metadata", {}).get("tags", [])
        for line in lines:
            if is_solution and BEGIN.match(line):
                inside = True
            elif is_solution and END.match(line):
                inside = False
            else:
                (written if inside else given).append(line)
        counts.written_lines += _code_lines(written)
        if further_level is None:
            counts.given_lines += _code_lines(given)
        else:
            counts.further_given_lines += _code_lines(given)
    return counts


def lessons() -> list[Path]:
    return sorted(LESSONS_DIR.glob(LESSON_GLOB))


def estimates() -> dict[str, tuple[int, int]]:
    """{lesson file name: (core minutes, going-further minutes)}, rounded; going further is 0 where there is none."""
    result = {}
    for path in lessons():
        counts = count(json.loads(path.read_text(encoding="utf-8")))
        further = counts.further_minutes()
        result[path.name] = (rounded(counts.core_minutes()), rounded(further) if further > 0 else 0)
    return result


def stated_time(core: int, further: int) -> str:
    """How the README's table and a lesson's header give a time."""
    return f"{core} min" + (f" (+{further} going further)" if further else "")


def mismatches() -> list[str]:
    """Every place that states a lesson's time, or the total, other than the estimate."""
    problems = []
    times = estimates()
    readme = README.read_text(encoding="utf-8")
    for name, (core, further) in times.items():
        notebook = json.loads((LESSONS_DIR / name).read_text(encoding="utf-8"))
        markdown = "\n".join("".join(c["source"]) for c in notebook["cells"] if c["cell_type"] == "markdown")
        header = re.search(r"\*\*Time:\*\* about (\d+) minutes(?: \(\+(\d+) going further\))?", markdown)
        said = (int(header.group(1)), int(header.group(2) or 0)) if header else None
        if said != (core, further):
            problems.append(f"{name}: its header says {said}, the estimate is {(core, further)}: "
                            f'write "**Time:** about {core} minutes'
                            + (f" (+{further} going further)" if further else "") + '"')
        row = re.search(rf"^\| \[{re.escape(name[:2])} [^\n]*\| ([^|\n]*) \|$", readme, re.M)
        if row is None or row.group(1).strip() != stated_time(core, further):
            problems.append(f"README.md: the row of lesson {name[:2]} says "
                            f"{row.group(1).strip() if row else None!r}, the estimate is {stated_time(core, further)!r}")
    core_total = sum(core for core, _ in times.values())
    further_total = sum(further for _, further in times.values())
    guide = " ".join(GUIDE.read_text(encoding="utf-8").split())  # one line: the phrase may wrap
    phrase = f"add up to {core_total} minutes, and {further_total} more for the going-further sections"
    if phrase not in guide:
        problems.append(f"docs/teaching.md should say the lessons {phrase!r}")
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if a stated time is not the estimate")
    args = parser.parse_args(argv)
    if args.check:
        problems = mismatches()
        for problem in problems:
            print(problem)
        return 1 if problems else 0
    print(f"{'lesson':40} {'prose':>6} {'given':>6} {'yours':>6} {'run':>5} {'core':>6} {'further':>8}")
    total_core = total_further = 0
    for path in lessons():
        c = count(json.loads(path.read_text(encoding="utf-8")))
        core, further = estimates()[path.name]
        total_core += core
        total_further += further
        print(f"{path.name:40} {c.words / PROSE_WORDS_PER_MINUTE:6.0f} {c.given_lines / GIVEN_LINES_PER_MINUTE:6.0f} "
              f"{c.written_lines * MINUTES_PER_WRITTEN_LINE:6.0f} {c.run_seconds / 60:5.1f} {core:6d} {further:8d}")
    print(f"{'total':40} {'':6} {'':6} {'':6} {'':5} {total_core:6d} {total_further:8d}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
