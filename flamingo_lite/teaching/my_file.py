"""`%%my_flamingo`: the learner's own Flamingo, gathered into one file as they write it.

A lesson's setup cell calls `my_file.start("03")`. That registers the cell magic `%%my_flamingo` in the running
IPython, says which lesson is running, and loads the definitions of the earlier lessons from the learner's file
into the notebook, so lesson 03's resampler is built from the learner's own lesson-02 attention.

A cell that starts with `%%my_flamingo` runs in the notebook's namespace exactly as it would without the line.
When it ran without an error, its source (solution markers taken out) is written into the file `my_flamingo.py`
in the current folder (or the path in the environment variable `MY_FLAMINGO_FILE`), as a section headed by a
comment naming the lesson and the names the cell defines:

    # === lesson 02: project ===
    def project(layer, x, latents):
        ...

Running the cell again replaces its section in place (a section of the same lesson that defines one of the same
names is the same cell); a new cell's section is appended. The file starts with `PREAMBLE`, a docstring and the
imports every section may use (torch, nn, F, einsum, rearrange, repeat, math), so it imports on its own:
`from my_flamingo import MyPerceiverResampler`. It is written atomically, so an interrupted write never leaves
half a file.

A check that fails marks its cell: after each cell, a call such as `lesson05.check_forward(MyMaskedCrossAttention)`
that raised `ExerciseFailed` marks the current lesson's section defining `MyMaskedCrossAttention` in its header,

    # === lesson 05: MyMaskedCrossAttention === (failed its check: fix it and run the check again)

and the same check passing takes the mark away, as does running the cell again with changed code (new code, not
checked yet). Code changed after its check passed in this kernel is marked too, until that check runs on it again:

    # === lesson 05: MyMaskedCrossAttention === (changed since its check passed: run the check again)

A later lesson's `start` uses flamingo_lite's version of a failed module in its place (`FALLBACKS`), and says so,
so it does not build on code known to be wrong; a failed section of other names is used as it is, with a line
saying it failed its check, and a changed one is used as it is, with a line saying it is not checked. A section
whose code calls a failed one's names says so in its own header, `(calls project, which failed its check: ...)`,
worked out anew at every write.

`tools/make_my_flamingo.py` assembles the course's own `notebooks/my_flamingo.py` from the lessons' cells with the
same functions, so running a solution lesson leaves that file byte for byte as it is.
"""
from __future__ import annotations

import ast
import os
import re
from pathlib import Path

from ..files import write_text_atomic

__all__ = [
    "CHANGED", "ENV_VAR", "FAILED", "FALLBACKS", "PREAMBLE", "Section", "checked_names", "clean_source", "defined_names",
    "failed_checks", "file_path", "warn_failed", "load_earlier", "mark_checked", "parse", "record", "register", "render", "start",
]

ENV_VAR = "MY_FLAMINGO_FILE"
FILE_NAME = "my_flamingo.py"

PREAMBLE = '''\
"""My Flamingo: the modules I wrote in the flamingo_lite course, one section per lesson cell.

Written by the `%%my_flamingo` cells of the lessons: each section is a cell as it last ran without an error, and
running that cell again replaces its section. A header ending in "(failed its check: ...)" is a cell whose check
failed when it last ran: later lessons say so, and use flamingo_lite's version in its place where there is one.
One ending in "(changed since its check passed: ...)" holds code its check has not run on: later lessons say so.
It needs only torch and einops:

    from my_flamingo import MyPerceiverResampler, MyGatedCrossAttentionBlock
"""
import math

import torch
import torch.nn.functional as F
from einops import einsum, rearrange, repeat
from torch import nn
'''

# What follows a section's header when its check failed the last time it ran. It stands after the closing `===`,
# so it is never read as names (a section with no names has "(no names)" between the `===`s).
FAILED = "(failed its check: fix it and run the check again)"
# What follows it on a section whose code changed after its check passed, until the check runs on the new code.
CHANGED = "(changed since its check passed: run the check again)"
# What follows it on a section whose code calls a failed section's names: worked out anew at every write, from the
# failed marks, so it is never kept from the file.
CALLS_FAILED = "(calls {names}, which failed {whose} check: this section runs on it as it is)"
HEADER = re.compile(
    rf"^# === lesson (?P<lesson>[0-9A-Za-z_]+): (?P<names>[^=]*?) ===(?P<failed> {re.escape(FAILED)})?(?P<changed> {re.escape(CHANGED)})?"
    r"(?P<calls> \(calls [^()]*, which failed (?:its|their) check: this section runs on it as it is\))?$", re.M
)
NO_NAMES = "(no names)"
_BEGIN = re.compile(r"^[ \t]*###\s*BEGIN SOLUTION\s*$")
_END = re.compile(r"^[ \t]*###\s*END SOLUTION\s*$")

# What a lesson uses in place of an earlier lesson's definition that the learner's file does not have yet.
FALLBACKS = {
    "MyPerceiverAttention": ("flamingo_lite", "PerceiverAttention"),
    "MyFeedForward": ("flamingo_lite", "FeedForward"),
    "my_cross_attention_mask": ("flamingo_lite.masks", "cross_attention_mask"),
    "MyMaskedCrossAttention": ("flamingo_lite", "MaskedCrossAttention"),
    "MyPerceiverResampler": ("flamingo_lite", "PerceiverResampler"),
    "MyGatedCrossAttentionBlock": ("flamingo_lite", "GatedCrossAttentionBlock"),
    "xattn_layer_indices": ("flamingo_lite.tiny.model", "xattn_layers"),
    "MyFlamingo": ("flamingo_lite.tiny.model", "Flamingo"),
}

# The start of the line that stands in for a solution in the student notebooks (tools/make_student_notebooks.py).
UNWRITTEN = 'raise NotImplementedError("Your turn'

_state = {"lesson": None, "recorded": {}}  # the running lesson; each name's object as its %%my_flamingo cell left it


class Section:
    """One cell's part of the file: its lesson, the names it defines, its source, whether its check failed, and
    whether its code changed after its check passed (`changed`, until the check runs again)."""

    def __init__(self, lesson: str, names: tuple[str, ...], body: str, failed: bool = False, changed: bool = False):
        self.lesson, self.names, self.body = str(lesson), tuple(names), body.strip("\n").rstrip()
        self.failed, self.changed = bool(failed), bool(changed) and not failed

    def header(self, calls_failed: tuple[str, ...] = ()) -> str:
        """The header line; `calls_failed`: names of failed sections this one's code calls."""
        mark = f" {FAILED}" if self.failed else f" {CHANGED}" if self.changed else ""
        if calls_failed:
            whose = "its" if len(calls_failed) == 1 else "their"
            mark += " " + CALLS_FAILED.format(names=", ".join(calls_failed), whose=whose)
        return f"# === lesson {self.lesson}: {', '.join(self.names) or NO_NAMES} ==={mark}"

    def calls(self, names) -> tuple[str, ...]:
        """Those of `names` (defined elsewhere) that this section's code reads."""
        return tuple(n for n in names if n not in self.names and re.search(rf"\b{re.escape(n)}\b", self.body))

    def _key(self):
        return self.lesson, self.names, self.body, self.failed, self.changed

    def __eq__(self, other):
        return isinstance(other, Section) and self._key() == other._key()

    def __repr__(self):
        return f"Section(lesson={self.lesson!r}, names={self.names!r}, failed={self.failed!r}, changed={self.changed!r})"


def file_path() -> Path:
    """Where the learner's file is: $MY_FLAMINGO_FILE, or my_flamingo.py in the current folder."""
    return Path(os.environ.get(ENV_VAR) or Path.cwd() / FILE_NAME)


def clean_source(cell: str) -> str:
    """A cell's source as the file holds it: without `### BEGIN/END SOLUTION` lines and trailing blank lines."""
    if not isinstance(cell, str):
        raise TypeError(f"a cell's source must be a str, got {type(cell).__name__}")
    return "\n".join(line for line in cell.splitlines() if not (_BEGIN.match(line) or _END.match(line))).strip("\n").rstrip()


def defined_names(source: str) -> tuple[str, ...]:
    """The names a cell defines at its top level (functions, classes, assigned names), in order."""
    names = []
    for node in ast.parse(source).body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            found = [node.name]
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            found = [n.id for t in targets for n in ast.walk(t) if isinstance(n, ast.Name)]
        else:
            found = []
        names += [n for n in found if n not in names]
    return tuple(names)


def outside_names(source: str, defined) -> list[str]:
    """The names a cell reads that it does not define itself and that are not in `defined` (what the file's
    preamble and sections define) nor builtins: names the cell takes from the notebook, which the file, run on its
    own, will not have. Every name the cell binds anywhere (an argument, a local, an import) counts as its own."""
    import builtins

    tree = ast.parse(source)
    bound, read = set(), []
    for node in ast.walk(tree):
        if isinstance(node, ast.Name):
            if isinstance(node.ctx, ast.Load):
                read.append(node.id)
            else:
                bound.add(node.id)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            bound.add(node.name)
        elif isinstance(node, ast.arg):
            bound.add(node.arg)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            bound.update((alias.asname or alias.name).split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ExceptHandler) and node.name:
            bound.add(node.name)
    known = bound | set(defined) | set(dir(builtins)) | {"__name__", "__file__"}
    return list(dict.fromkeys(name for name in read if name not in known))


def preamble_names() -> set:
    """The names the file's preamble defines (its imports)."""
    return {(alias.asname or alias.name).split(".")[0] for node in ast.parse(PREAMBLE).body
            if isinstance(node, (ast.Import, ast.ImportFrom)) for alias in node.names}


def render(sections: list[Section]) -> str:
    """The file's text: the preamble, then each section under its header; a section that calls a failed one's names
    says so in its header, so the file read on its own tells which code runs on code known to be wrong."""
    failed = [n for s in sections if s.failed for n in s.names]
    return PREAMBLE + "".join(f"\n\n{s.header(s.calls(failed))}\n{s.body}\n" for s in sections)


def parse(text: str) -> list[Section]:
    """The sections of a file written by `render` (text before the first header is the preamble, not kept)."""
    headers = list(HEADER.finditer(text))
    sections = []
    for i, match in enumerate(headers):
        end = headers[i + 1].start() if i + 1 < len(headers) else len(text)
        names = tuple(n.strip() for n in match["names"].split(",") if n.strip() and n.strip() != NO_NAMES)
        sections.append(Section(match["lesson"], names, text[match.end():end], failed=bool(match["failed"]),
                                changed=bool(match["changed"])))
    return sections


def merge(sections: list[Section], new: Section) -> list[Section]:
    """`sections` with `new` in place of the same cell's old section (same lesson, a name in common), or appended."""
    same = [i for i, s in enumerate(sections) if s.lesson == new.lesson and set(s.names) & set(new.names)]
    if not same:
        return sections + [new]
    kept = [s for i, s in enumerate(sections) if i not in same[1:]]
    kept[same[0]] = new
    return kept


def record(lesson: str, cell: str, path: str | os.PathLike | None = None, *, changed: bool = False) -> Path:
    """Write one cell of `lesson` into the file at `path` (default `file_path()`), replacing its old section.

    changed: the cell's code is not the code its check passed on in this kernel (the section is marked `CHANGED`).
    """
    path = Path(path) if path is not None else file_path()
    body = clean_source(cell)
    new = Section(lesson, defined_names(body), body)
    old = parse(path.read_text(encoding="utf-8")) if path.exists() else []
    # the same code run again keeps its mark (it still fails its check, or is still unchecked); other code that
    # no check passed on is not checked yet
    same_cell = [s for s in old if s.lesson == new.lesson and set(s.names) & set(new.names) and s.body == new.body]
    new.failed = any(s.failed for s in same_cell)
    new.changed = not new.failed and (changed or any(s.changed for s in same_cell))
    text = render(merge(old, new))
    if not path.exists() or path.read_text(encoding="utf-8") != text:
        write_text_atomic(path, text)
    return path


def load_earlier(lesson: str, namespace: dict, *, path=None, needs=()) -> list[str]:
    """Run the preamble and the sections of the lessons before `lesson` from the file, in `namespace`.

    needs: names this lesson uses (nothing is loaded when it is empty); each one the file does not define, or
    defines in a section that is still the student stub or whose check failed, is taken from flamingo_lite
    (`FALLBACKS`) with a line saying so, and so is each one an earlier section calls. The sections are all loaded,
    since a later lesson's code calls the earlier ones' (lesson 05's layer calls lesson 04's mask); a failed
    section's names that flamingo_lite has no stand-in for are used as they are, with a line saying so, and so are
    a changed section's (code its check has not run on). Returns the lines printed.
    """
    path = Path(path) if path is not None else file_path()
    if not needs:
        return []
    sections = [s for s in (parse(path.read_text(encoding="utf-8")) if path.exists() else []) if s.lesson < str(lesson)]
    written = {n: s for s in sections for n in s.names}
    # an earlier section may call a definition the file lacks (lesson 05's layer calls lesson 04's mask): it stands in too
    called = [n for n in FALLBACKS if n not in needs and any(re.search(rf"\b{n}\b", s.body) for s in sections)]
    standins, said = {}, []
    for name in [*needs, *called]:
        module_name, attr = FALLBACKS[name]
        section, fix = written.get(name), ""
        if section is None:
            why = f"{path.name} has no {name} yet"
        elif UNWRITTEN in section.body:  # the student version's stub, still there
            why = f"your {name} in {path.name} is not written yet (lesson {section.lesson})"
        elif section.failed:
            why = f"your {name} failed lesson {section.lesson}'s check when you last ran it"
            fix = f" (fix it in lesson {section.lesson} and run its check again)"
        else:
            continue
        standins[name] = getattr(__import__(module_name, fromlist=[attr]), attr)
        if name not in needs:  # not this lesson's: say whose code needs it, so the line does not read as a task here
            callers = sorted({s.lesson for s in sections if name not in s.names and re.search(rf"\b{name}\b", s.body)})
            fix += f", for your lesson {' and '.join(callers)} code, which calls it"
        said.append(f"{why}: using {module_name}.{attr} in its place{fix}")
    lines = []
    if sections:
        exec(compile(PREAMBLE, str(path), "exec"), namespace)
        namespace.update(standins)  # before the sections run: one may use a stand-in as it loads (Resampler = MyPerceiverResampler)
        for s in sections:
            exec(compile(s.body, f"{path.name}, lesson {s.lesson}", "exec"), namespace)
        by_lesson = {}
        for s in sections:  # what is used from the file: not the names a stand-in replaces (said below)
            by_lesson.setdefault(s.lesson, []).extend(n for n in s.names if n not in standins)
        for les, names in by_lesson.items():
            if names:
                lines.append(f"from your {path.name}, lesson {les}: {', '.join(names)}")
        for s in sections:
            if s.failed and not set(s.names) & set(FALLBACKS):  # a failed cell with nothing to stand in for it
                callers = [n for other in sections if other is not s and other.calls(s.names)
                           for n in other.names if n not in standins]
                by = f", and your {', '.join(callers)} call{'s' if len(callers) == 1 else ''} it" if callers else ""
                lines.append(f"your {', '.join(s.names)} failed lesson {s.lesson}'s check when you last ran it: used as "
                             f"it is{by} (fix it in lesson {s.lesson} and run its check again)")
            elif s.changed and not set(s.names) & set(standins):
                lines.append(f"your {', '.join(s.names)} changed in lesson {s.lesson} after its check passed, and the "
                             f"check has not run on it since: used as it is (run lesson {s.lesson}'s check again)")
    namespace.update(standins)  # a stub's or a failed section's definition gives way to the stand-in
    lines += said
    for line in lines:
        print(line)
    return lines


def _magic(line: str, cell: str):
    """The cell magic: run the cell as usual; if it raised nothing, record it in the learner's file."""
    from IPython import get_ipython

    shell = get_ipython()
    lesson = _state["lesson"]
    if lesson is None:
        raise RuntimeError("%%my_flamingo needs to know the lesson: run the lesson's setup cell (my_file.start) first")
    code = shell.transform_cell(cell)
    exec(compile(code, shell.compile.cache(cell), "exec"), shell.user_ns)  # an error propagates: nothing is written
    from .exercises import passed_on_other_code

    unchecked = passed_on_other_code(defined_names(clean_source(cell)), shell.user_ns)  # [(check, name)]
    path = record(lesson, cell, changed=bool(unchecked))
    if unchecked:
        check, name = unchecked[0]
        print(f"note: your {name} changed since {check} passed on it: run that check again ({path.name} marks this "
              "section until it passes).")
    sections = parse(path.read_text(encoding="utf-8")) if path.exists() else []
    defined = preamble_names() | {n for section in sections for n in section.names}
    outside = outside_names(clean_source(cell), defined)
    earlier = [n for n in outside if n in FALLBACKS]  # an earlier lesson's module, not written yet: a stand-in runs
    other = [n for n in outside if n not in FALLBACKS]
    if earlier:
        stand_ins = ", ".join(f"{FALLBACKS[n][0]}.{FALLBACKS[n][1]} for your {n}" for n in earlier)
        names = ", ".join(earlier)
        print(f"note: this cell runs here on {stand_ins} (the setup cell said so), because {path.name} does not have "
              f"your {names} yet. Your code in this cell is recorded all the same; nothing more to do about it here: once "
              f"you write "
              f"{names} in {'its' if len(earlier) == 1 else 'their'} own lesson, your file uses yours (until then, "
              f"imported on its own outside the notebooks, {path.name} lacks {'it' if len(earlier) == 1 else 'them'}).")
    if other:
        print(f"note: this cell uses {', '.join(other)} from the notebook, which {path.name} neither defines nor "
              "imports (it imports only torch and einops), so the file will not run on its own: write it from torch "
              "and einops, or define it in a %%my_flamingo cell.")
    # what the file now holds: a check marks its section only while the name is still this cell's definition
    _state["recorded"].update({name: shell.user_ns.get(name) for name in defined_names(clean_source(cell))})


def checked_names(source: str, failing_line: int | None = None) -> tuple[str, ...]:
    """The names a cell checks: `x` in each call `check...(x, ...)` or `lesson05.check...(x, ...)` of its source.

    failing_line: the line a check raised on; when a check call spans it, only that call's name (the checks
    before it passed, the ones after it did not run).
    """
    calls = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Name):
            func = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
            if func.startswith("check"):
                calls.append((node.lineno, node.end_lineno, node.args[0].id))
    calls.sort()
    raised = [name for first, last, name in calls if failing_line is not None and first <= failing_line <= last]
    return tuple(dict.fromkeys(raised or [name for _, _, name in calls]))


def _cell_line(error: BaseException) -> int | None:
    """The line of the cell an error left it from: the first module-level frame of its traceback."""
    tb = error.__traceback__
    while tb is not None:
        if tb.tb_frame.f_code.co_name == "<module>":
            return tb.tb_lineno
        tb = tb.tb_next
    return None


def mark_checked(source: str, failed: bool, *, failing_line: int | None = None, lesson: str | None = None,
                 path=None, only=None) -> list[Section]:
    """Mark (`failed=True`) or clear the sections of `lesson` (default: the current one) that define a name the
    cell `source` checks (`checked_names`), of the names in `only` when it is given; either way a `changed` mark
    goes, since the check has now run on the code. Returns the sections changed; the file is written only when
    some are.
    """
    names = set(checked_names(source, failing_line))
    if only is not None:
        names &= set(only)
    lesson = _state["lesson"] if lesson is None else str(lesson)
    path = Path(path) if path is not None else file_path()
    if not names or lesson is None or not path.exists():
        return []
    sections = parse(path.read_text(encoding="utf-8"))
    changed = [s for s in sections if s.lesson == lesson and names & set(s.names) and (s.failed != failed or s.changed)]
    for s in changed:
        s.failed, s.changed = failed, False  # a verdict on the code as it is now
    if changed:
        write_text_atomic(path, render(sections))
    return changed


def failed_checks(*names: str, lesson: str | None = None, path=None) -> tuple[str, ...]:
    """Those of `names` whose section of `lesson` (default: the current one) failed its check when it last ran."""
    lesson = _state["lesson"] if lesson is None else str(lesson)
    path = Path(path) if path is not None else file_path()
    if lesson is None or not path.exists():
        return ()
    failed = {n for s in parse(path.read_text(encoding="utf-8")) if s.lesson == lesson and s.failed for n in s.names}
    return tuple(n for n in names if n in failed)


def warn_failed(*names: str, what: str = "this cell", **kwargs) -> tuple[str, ...]:
    """Print a line before a long cell that uses code whose check failed, so a learner does not wait for a run of
    code known to be wrong. Returns the names it warned of (`failed_checks`)."""
    failed = failed_checks(*names, **kwargs)
    if failed:
        listed = ", ".join(failed)
        print(f"note: your {listed} failed {'its check' if len(failed) == 1 else 'their checks'} when last run, and "
              f"{what} uses {'it as it is' if len(failed) == 1 else 'them as they are'}: fix the cell and run its "
              "check until it passes, then run this cell again.")
    return failed


def _after_cell(result) -> None:
    """IPython's post_run_cell: a check that failed marks the current lesson's section it checked; passing clears it.

    Never raises into the learner's session: a cell that cannot be parsed, no lesson started, no file: nothing.
    """
    try:
        from .exercises import ExerciseFailed

        error = result.error_in_exec
        if isinstance(error, ExerciseFailed):
            failed = True
        elif result.success:
            failed = False
        else:  # another error: the check did not say anything about the code
            return
        source = result.info.raw_cell
        from IPython import get_ipython

        shell = get_ipython()
        only = None
        if shell is not None:
            source = shell.transform_cell(source)  # the code that ran: its lines are the traceback's
            # a name redefined in a plain cell since its %%my_flamingo cell ran is a try-out: the file's version is not the one checked
            only = [n for n, obj in _state["recorded"].items() if shell.user_ns.get(n) is obj]
        mark_checked(source, failed, failing_line=_cell_line(error) if failed else None, only=only)
    except Exception:  # noqa: BLE001 - the learner's session comes first
        return


def register(shell=None) -> None:
    """Register `%%my_flamingo` and the check watcher in `shell` (default: the running IPython; nothing happens
    outside IPython). The watcher is registered once per shell."""
    if shell is None:
        try:
            from IPython import get_ipython
        except ImportError:
            return
        shell = get_ipython()
    if shell is not None:
        shell.register_magic_function(_magic, magic_kind="cell", magic_name="my_flamingo")
        if _after_cell not in shell.events.callbacks["post_run_cell"]:
            shell.events.register("post_run_cell", _after_cell)


def start(lesson: str, namespace: dict | None = None, *, needs=()) -> None:
    """A lesson's setup: register the magic, set the lesson, and load the earlier lessons' definitions.

    lesson: "02", "03", ... (the lesson's number). namespace: where to load them (default: the notebook's).
    needs: names of earlier lessons this lesson uses (see `load_earlier`); none: nothing is loaded.
    """
    if not isinstance(lesson, str) or not re.fullmatch(r"[0-9A-Za-z_]+", lesson):
        raise ValueError(f"lesson must be a lesson number such as '03', got {lesson!r}")
    _state["lesson"] = lesson
    register()
    if namespace is None:
        from IPython import get_ipython

        shell = get_ipython()
        if shell is None:
            raise ValueError("outside IPython, pass the namespace to load the earlier lessons into")
        namespace = shell.user_ns
    load_earlier(lesson, namespace, needs=needs)


register()
