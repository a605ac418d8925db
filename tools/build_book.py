#!/usr/bin/env python3
"""Build the course as a static website, from the committed, executed notebooks (none is executed again).

    python3 course.py book                 set up, then build the site into build/book/ (open build/book/index.html)
    python tools/build_book.py [--out DIR] the same with the Python you run it with (it needs the `book` extra)

The site is made with Sphinx and MyST-NB (configuration: book/conf.py). This script first lays out its sources in
build/book-src/: the README as the home page (its lesson map included), the lessons in order, each with links to
its student version, Colab and Binder at the top (and, where a lesson has a widget, a note that it needs a live
kernel), the guides in docs/ and the benchmark reports. Links in them that point at a page of the site stay links
between pages; links to other files of the repository point at GitHub; a link to a file that does not exist is an
error that names it. Then it runs `sphinx-build` with every warning an error.
"""
from __future__ import annotations

import argparse
import copy
import importlib.util
import posixpath
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))
from make_student_notebooks import GITHUB_REPO, LESSON_GLOB  # noqa: E402  (the repository the badges point at)
from flamingo_lite.files import write_text_atomic  # noqa: E402

CONF_DIR = ROOT / "book"
SOURCE = ROOT / "build" / "book-src"
OUT = ROOT / "build" / "book"
SETUP = "python3 course.py book"

# (module, what to install): the tools the build needs, all in the `book` extra of pyproject.toml
TOOLS = [("sphinx", "sphinx"), ("myst_nb", "myst-nb"), ("sphinx_book_theme", "sphinx-book-theme"),
         ("sphinx-mathjax-offline", "sphinx-mathjax-offline")]  # fmt: skip

WIDGET_MIME = "application/vnd.jupyter.widget-view+json"
LINK = re.compile(r"(!?\[[^\]]*\]\()([^)\s]+)(\))")  # a Markdown link or image: [text](target)
BADGE = re.compile(r"\[!\[([^\]]*)\]\([^)\s]+\)\]\(([^)\s]+)\)")  # a badge: [![alt](picture)](target)


class BookError(Exception):
    """Something in the course's files that the site cannot be built from; the message says what and where."""


# ----------------------------------------------------------------------------------------------------------------
# where things are


def colab_url(student: str) -> str:
    """Colab opens the student version `notebooks/student/NN_x.ipynb` (as the instructor guide's badges do)."""
    return f"https://colab.research.google.com/github/{GITHUB_REPO}/blob/main/{student}"


def binder_url(notebook: str) -> str:
    return f"https://mybinder.org/v2/gh/{GITHUB_REPO}/HEAD?urlpath=lab/tree/{notebook}"


def github_url(path: str, root: Path = ROOT) -> str:
    kind = "tree" if (root / path).is_dir() else "blob"
    return f"https://github.com/{GITHUB_REPO}/{kind}/main/{path}".rstrip("/")


def lesson_paths(root: Path = ROOT) -> list[str]:
    return [p.relative_to(root).as_posix() for p in sorted((root / "notebooks").glob(LESSON_GLOB))]


def page_paths(root: Path = ROOT) -> dict[str, str]:
    """{repository path: path in the site's sources} of every page: the README (the home page), lessons, guides."""
    pages = {"README.md": "index.md"}
    for path in lesson_paths(root) + sorted(p.relative_to(root).as_posix() for p in (root / "docs").glob("*.md")):
        pages[path] = path
    for p in sorted((root / "benchmarks").glob("*.md")):
        pages[p.relative_to(root).as_posix()] = p.relative_to(root).as_posix()
    return pages


# ----------------------------------------------------------------------------------------------------------------
# links


def rewrite_links(text: str, where: str, pages: dict[str, str], copied: set[str], root: Path = ROOT) -> str:
    """`text` (Markdown from the repository file `where`) with its relative links made to work on the site.

    A link to a page of the site, or to a file copied into it (pictures; student notebooks, linked as downloads),
    stays relative, to that page's place in the site's sources; a link to anything else in the repository goes to GitHub; a link to
    nothing raises BookError naming the file and the link.
    """
    here = posixpath.dirname(pages.get(where, where))

    def one(match: re.Match) -> str:
        target = match.group(2)
        if re.match(r"^[a-z][a-z0-9+.-]*:", target) or target.startswith("#"):  # https:, mailto:, an anchor
            return match.group(0)
        path, _, anchor = target.partition("#")
        repo_path = posixpath.normpath(posixpath.join(posixpath.dirname(where), path))
        if repo_path.startswith("../") or not (root / repo_path).exists():
            raise BookError(f"{where}: the link {target!r} points at {repo_path}, which is not in the repository")
        if repo_path in pages or repo_path in copied:
            site_path = pages.get(repo_path, repo_path)
            new = posixpath.relpath(site_path, here or ".") + (f"#{anchor}" if anchor else "")
            if repo_path not in pages and not match.group(1).startswith("!"):
                new = f"path:{new}"  # MyST: a download of that file, not a page
        else:
            new = github_url(repo_path, root) + (f"#{anchor}" if anchor else "")
        return match.group(1) + new + match.group(3)

    return LINK.sub(one, text)


def badges_as_links(text: str) -> str:
    """Picture badges (pictures served by other sites) as plain links, so that the pages load nothing from
    elsewhere. The CI badge (its picture is the whole point) is dropped."""

    def one(match: re.Match) -> str:
        alt, target = match.group(1), match.group(2)
        return "" if "/actions/" in target else f"[{alt}]({target})"

    return BADGE.sub(one, text)


# ----------------------------------------------------------------------------------------------------------------
# the pages


def has_widget(cell) -> bool:
    return cell.get("cell_type") == "code" and any(WIDGET_MIME in o.get("data", {}) for o in cell.get("outputs", []))


def lesson_links(lesson: str, widgets: bool) -> str:
    """The MyST block at the top of a lesson page: its student version (a download), Colab, Binder, the source."""
    name = posixpath.basename(lesson)
    student = f"notebooks/student/{name}"
    block = (
        ":::{container} lesson-links\n"
        f"{{download}}`Student version (.ipynb) <student/{name}>` "
        f"[Open the student version in Colab]({colab_url(student)}) "
        f"[Launch the student version on Binder]({binder_url(student)}) "
        f"[This lesson on GitHub]({github_url(lesson)})\n"
        ":::\n"
    )
    if widgets:
        block += (
            "\n:::{note}\nThis lesson has interactive widgets. On this page they are not drawn: a widget needs a live "
            f"kernel. Run the lesson on [Binder]({binder_url(lesson)}) or [Colab]({colab_url(student)}), or in "
            "JupyterLab on your own machine (`python3 course.py lab`).\n:::\n"
        )
    return block


def widget_note(lesson: str) -> str:
    student = f"notebooks/student/{posixpath.basename(lesson)}"
    return (
        ":::{note}\nThe interactive widget this cell makes needs a live kernel: it appears here when the lesson runs "
        f"on [Binder]({binder_url(lesson)}), on [Colab]({colab_url(student)}) or in `python3 course.py lab`.\n:::"
    )


def lesson_page(lesson: str, pages: dict[str, str], copied: set[str], root: Path = ROOT):
    """The lesson as a page: the committed notebook with links fixed, the links block under its title, and each
    widget output replaced by a note (a widget cannot be drawn without a kernel)."""
    nb = nbformat.read(root / lesson, as_version=4)
    nb.metadata.pop("widgets", None)  # saved widget state: nothing on the page can use it
    widgets = any(has_widget(c) for c in nb.cells)
    cells = []
    for cell in nb.cells:
        cell = copy.deepcopy(cell)
        if cell.cell_type == "markdown":
            cell.source = rewrite_links(badges_as_links(cell.source), lesson, pages, copied, root)
        cells.append(cell)
        if has_widget(cell):
            cell.outputs = [o for o in cell.outputs if WIDGET_MIME not in o.get("data", {})]
            cells.append(nbformat.v4.new_markdown_cell(widget_note(lesson)))
    first = cells[0] if cells else None
    if first is None or first.cell_type != "markdown" or not first.source.startswith("# "):
        raise BookError(f"{lesson}: the first cell must be a Markdown cell that starts with the lesson's title (# ...)")
    title, _, rest = first.source.partition("\n")
    first.source = f"{title}\n\n{lesson_links(lesson, widgets)}\n{rest}"
    for index, cell in enumerate(cells):
        cell.pop("id", None)
        cell["id"] = f"cell-{index}"  # new cells were put in; ids stay unique
    nb.cells = cells
    nb.nbformat_minor = max(nb.nbformat_minor, 5)
    nbformat.validate(nb)
    return nb


def toctree(caption: str, paths: list[str]) -> str:
    entries = "\n".join(posixpath.splitext(p)[0] for p in paths)
    return f"\n```{{toctree}}\n:caption: {caption}\n:hidden:\n\n{entries}\n```\n"


def home_page(pages: dict[str, str], copied: set[str], root: Path = ROOT) -> str:
    """The README (the lesson map is its heart) with its badges as plain links, and the site's table of contents."""
    text = rewrite_links(badges_as_links((root / "README.md").read_text()), "README.md", pages, copied, root)
    lessons = [p for p in pages.values() if p.startswith("notebooks/")]
    guides = [p for p in pages.values() if p.startswith("docs/")]
    reports = sorted((p for p in pages.values() if p.startswith("benchmarks/")), key=lambda p: not p.endswith("README.md"))
    return text + toctree("Lessons", lessons) + toctree("Guides", guides) + toctree("Benchmarks", reports)


def stage(source: Path = SOURCE, root: Path = ROOT) -> dict:
    """Lay out the site's sources in `source` (made afresh). Returns what was put there."""
    if source.exists():
        shutil.rmtree(source)
    shutil.copytree(CONF_DIR, source, ignore=shutil.ignore_patterns("__pycache__"))
    pages = page_paths(root)
    pictures = [p for p in (root / "assets").rglob("*") if p.suffix in (".png", ".svg", ".jpg", ".gif")]
    pictures += [p for p in (root / "benchmarks").rglob("*") if p.suffix in (".png", ".svg")]
    students = sorted((root / "notebooks" / "student").glob(LESSON_GLOB))
    copied = {p.relative_to(root).as_posix() for p in pictures + students}
    for path in copied:
        (source / path).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(root / path, source / path)
    for repo_path, site_path in pages.items():
        target = source / site_path
        target.parent.mkdir(parents=True, exist_ok=True)
        if repo_path == "README.md":
            write_text_atomic(target, home_page(pages, copied, root))
        elif repo_path.endswith(".ipynb"):
            nbformat.write(lesson_page(repo_path, pages, copied, root), target)
        else:
            write_text_atomic(target, rewrite_links(badges_as_links((root / repo_path).read_text()), repo_path, pages, copied, root))
    return {"pages": pages, "copied": copied}


# ----------------------------------------------------------------------------------------------------------------
# the build


def missing_tools() -> list[str]:
    """The packages of the `book` extra that this Python lacks (what to pip install)."""
    return [package for module, package in TOOLS if importlib.util.find_spec(module) is None]


def how_to_set_up(missing: list[str]) -> str:
    return (
        f"The website is built with Sphinx and MyST-NB, and this Python ({sys.executable}) lacks "
        f"{', '.join(missing)}. Set up with `{SETUP}` (it installs everything into .venv/, then builds), or install "
        'the book extra into this Python with `pip install -e ".[book]"` and run this again.'
    )


def build(out: Path = OUT, source: Path = SOURCE, root: Path = ROOT) -> dict:
    """Stage the sources and run sphinx-build (warnings are errors). Returns the seconds taken and the page count."""
    start = time.perf_counter()
    stage(source, root)
    doctrees = source.parent / f".{source.name}-doctrees"
    cmd = [sys.executable, "-m", "sphinx", "-b", "html", "-W", "--keep-going", "-n", "-q", "-E",
           "-d", str(doctrees), str(source), str(out)]  # fmt: skip
    done = subprocess.run(cmd, cwd=source)
    if done.returncode != 0:
        raise BookError(f"sphinx-build exited with code {done.returncode} (its messages are above)")
    pages = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.html") if not p.relative_to(out).parts[0].startswith("_"))
    return {"seconds": time.perf_counter() - start, "pages": pages}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python tools/build_book.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=OUT, help=f"where the site goes (default {OUT.relative_to(ROOT)})")
    parser.add_argument("--source", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    missing = missing_tools()
    if missing:
        print(how_to_set_up(missing), file=sys.stderr)
        return 2
    out = args.out.resolve()
    source = args.source.resolve() if args.source else (SOURCE if out == OUT else out.parent / f"{out.name}-src")
    try:
        result = build(out, source)
    except BookError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    shown = out.relative_to(ROOT) if out.is_relative_to(ROOT) else out
    print(f"built {len(result['pages'])} pages into {shown}/ in {result['seconds']:.1f} s; open {shown}/index.html")
    return 0


if __name__ == "__main__":
    sys.exit(main())
