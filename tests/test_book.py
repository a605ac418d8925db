"""The course's website: built from the committed notebooks, then read in headless Chromium as a visitor would.

`python tools/build_book.py --out DIR` (what `python3 course.py book` runs) builds the site into a temporary
folder; a small HTTP server on 127.0.0.1 serves it, and Chromium (Debian's, through Playwright, as in
test_browser.py) opens the pages:

* every lesson page shows each of its pictures (every `img` loaded, naturalWidth > 0, at least as many as the
  notebook has pictures) and links its student version, Colab and Binder; a lesson with a widget says that the
  widget needs a live kernel;
* every local link of every page (links, pictures, scripts, style sheets, anchors) resolves, and no page loads
  anything from another host;
* the maths is typeset by the MathJax the site serves itself; the search box finds a lesson.
"""
from __future__ import annotations

import functools
import http.server
import importlib.util
import json
import re
import subprocess
import sys
import threading
import time
import urllib.parse
from pathlib import Path

import pytest

from test_browser import CHROMIUM, CHROMIUM_ARGS, ensure_chromium

pytestmark = pytest.mark.browser

ROOT = Path(__file__).resolve().parent.parent
PAGE_S = 60


def load_build_book():
    spec = importlib.util.spec_from_file_location("build_book", ROOT / "tools" / "build_book.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


book = load_build_book()
LESSONS = book.lesson_paths()


def pictures_in(lesson: str) -> int:
    """How many pictures the committed lesson shows: PNG outputs and Markdown images."""
    nb = json.loads((ROOT / lesson).read_text())
    count = 0
    for cell in nb["cells"]:
        if cell["cell_type"] == "markdown":
            count += len(re.findall(r"!\[[^\]]*\]\([^)]+\)", "".join(cell["source"])))
        for output in cell.get("outputs", []):
            count += "image/png" in output.get("data", {})
    return count


def has_widget(lesson: str) -> bool:
    nb = json.loads((ROOT / lesson).read_text())
    return any(book.has_widget(cell) for cell in nb["cells"])


# ----------------------------------------------------------------------------------------------------------------
# fixtures: the built site, a server, a browser


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    missing = book.missing_tools()
    if missing:
        pytest.skip(book.how_to_set_up(missing))
    out = tmp_path_factory.mktemp("site") / "book"
    start = time.perf_counter()
    done = subprocess.run([sys.executable, str(ROOT / "tools" / "build_book.py"), "--out", str(out)],
                          capture_output=True, text=True, timeout=600)  # fmt: skip
    seconds = time.perf_counter() - start
    assert done.returncode == 0, f"the build failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    said = re.search(r"built (\d+) pages", done.stdout)
    assert said and int(said.group(1)) >= len(LESSONS) + 3, done.stdout
    print(f"\nbuilt the site in {seconds:.1f} s: {done.stdout.strip()}")
    return out


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):  # no line per request in the test's output
        pass


class Server:
    """The site over HTTP on 127.0.0.1, as GitHub Pages serves it (a folder's index.html for the folder)."""

    def __init__(self, folder: Path):
        handler = functools.partial(QuietHandler, directory=str(folder))
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_port}/"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def stop(self):
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=10)


@pytest.fixture(scope="module")
def server(site):
    server = Server(site)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def browser(site, tmp_path_factory):
    reason = ensure_chromium()
    if reason:
        pytest.skip(reason)
    from playwright.sync_api import sync_playwright

    home = tmp_path_factory.mktemp("browser-home")
    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS, env={"HOME": str(home)})
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture
def page(browser, server):
    """A page that records every request to a host other than the test server (there should be none)."""
    context = browser.new_context(viewport={"width": 1300, "height": 1000})
    page = context.new_page()
    page.set_default_timeout(PAGE_S * 1000)
    page.elsewhere = []
    page.on("request", lambda r: None if r.url.startswith(server.url) or r.url.startswith("data:") else page.elsewhere.append(r.url))
    try:
        yield page
    finally:
        context.close()


def visit(page, server, path: str):
    reply = page.goto(server.url + path)
    assert reply is not None and reply.status == 200, f"{path}: HTTP {reply.status if reply else 'no reply'}"
    page.wait_for_load_state("load")  # pictures, scripts and style sheets: every request a page makes by itself


def html_page(lesson: str) -> str:
    return lesson[: -len(".ipynb")] + ".html"


# ----------------------------------------------------------------------------------------------------------------
# the tests


def test_the_home_page_is_the_lesson_map_and_the_lessons_come_in_order(page, server):
    visit(page, server, "index.html")
    assert page.title().startswith("Flamingo, from scratch")
    table = page.locator("table", has_text="what you write, and see")
    assert table.count() == 1, "the README's lesson map is not on the home page"
    map_links = table.locator("a").evaluate_all("els => els.map(e => e.getAttribute('href'))")
    for lesson in LESSONS:
        assert html_page(lesson) in map_links, f"the lesson map does not link the page of {lesson}"
    nav = page.locator("nav.bd-docs-nav a.reference.internal").evaluate_all("els => els.map(e => e.getAttribute('href'))")
    lesson_nav = [href for href in nav if href.startswith("notebooks/")]
    assert lesson_nav == [html_page(lesson) for lesson in LESSONS], f"the side bar's lessons are not in order: {lesson_nav}"
    assert {"docs/teaching.html", "docs/interop.html"} <= set(nav), f"the guides are missing from the side bar: {nav}"
    assert page.elsewhere == [], f"the home page loaded from other hosts: {page.elsewhere}"


def test_every_lesson_page_shows_its_pictures_and_links_its_student_version(page, server):
    for lesson in LESSONS:
        visit(page, server, html_page(lesson))
        article = page.locator("article.bd-article")
        page.wait_for_function(
            "() => Array.from(document.querySelectorAll('article img')).every(i => i.complete)", timeout=PAGE_S * 1000
        )
        shown = article.locator("img").evaluate_all("els => els.map(i => [i.getAttribute('src'), i.naturalWidth])")
        broken = [src for src, width in shown if width == 0]
        assert broken == [], f"{lesson}: pictures that did not load: {broken}"
        assert len(shown) >= pictures_in(lesson), f"{lesson}: {len(shown)} pictures on the page, the notebook has {pictures_in(lesson)}"

        student = f"notebooks/student/{Path(lesson).name}"
        links = page.locator(".lesson-links a").evaluate_all("els => els.map(e => [e.textContent, e.href])")
        hrefs = [href for _, href in links]
        assert book.colab_url(student) in hrefs and book.binder_url(student) in hrefs, f"{lesson}: {links}"
        downloads = [href for text, href in links if "Student version" in text]
        assert len(downloads) == 1 and downloads[0].endswith(f"/{Path(lesson).name}"), f"{lesson}: {links}"
        reply = page.request.get(downloads[0])
        assert reply.status == 200 and json.loads(reply.body())["cells"], f"{lesson}: the student version does not download"

        note = article.locator(".admonition", has_text="needs a live kernel")
        if has_widget(lesson):
            assert note.count() >= 2, f"{lesson} has a widget, but the page does not say where it can be used"
            note_links = note.first.locator("a").evaluate_all("els => els.map(e => e.href)")
            assert book.binder_url(lesson) in note_links and book.colab_url(student) in note_links, note_links
        else:
            assert note.count() == 0, f"{lesson} has no widget, yet its page talks of one"
        assert page.elsewhere == [], f"{lesson}: the page loaded from other hosts: {page.elsewhere}"


LOCAL_TARGETS = """() => {
    const out = [];
    for (const [selector, attribute] of [['a[href]', 'href'], ['img[src]', 'src'], ['script[src]', 'src'], ['link[href]', 'href']])
        for (const element of document.querySelectorAll(selector)) out.push(element[attribute]);
    return out;
}"""


def target_problem(site: Path, server: Server, url: str, ids: dict) -> str | None:
    """Why `url` (on the test server) does not resolve in the built site, or None when it does."""
    parts = urllib.parse.urlsplit(url)
    path = site / urllib.parse.unquote(parts.path).lstrip("/")
    if path.is_dir():
        path = path / "index.html"
    if not path.is_file():
        return "no such file"
    if parts.fragment and path.suffix == ".html":
        if path not in ids:
            ids[path] = set(re.findall(r'\sid="([^"]+)"', path.read_text(errors="replace")))
        if urllib.parse.unquote(parts.fragment) not in ids[path]:
            return f"no element with id {parts.fragment!r} there"
    return None


def test_every_local_link_resolves_and_nothing_comes_from_elsewhere(page, server, site):
    pages = sorted(p.relative_to(site).as_posix() for p in site.rglob("*.html") if not p.relative_to(site).parts[0].startswith("_"))
    assert len(pages) >= len(LESSONS) + 3
    ids, problems, checked = {}, [], 0
    for path in pages:
        visit(page, server, path)
        for url in page.evaluate(LOCAL_TARGETS):
            if not url.startswith(server.url):
                continue  # another site (GitHub, Colab, Binder, arXiv): a link, never loaded
            checked += 1
            problem = target_problem(site, server, url, ids)
            if problem:
                problems.append(f"{path} -> {url[len(server.url):]}: {problem}")
    assert problems == [], "links that do not resolve:\n" + "\n".join(sorted(set(problems)))
    assert checked > 20 * len(pages)
    assert page.elsewhere == [], f"pages loaded from other hosts: {sorted(set(page.elsewhere))}"


def test_the_maths_is_typeset_by_the_sites_own_mathjax(page, server):
    lesson = next(lesson for lesson in LESSONS if lesson.startswith("notebooks/01_"))
    visit(page, server, html_page(lesson))
    sources = page.locator("script[src*='mathjax']").evaluate_all("els => els.map(e => e.src)")
    assert sources and all(src.startswith(server.url) for src in sources), f"MathJax is not served by the site: {sources}"
    maths = page.locator("article .math").count()
    assert maths > 0, "lesson 01 has maths, but its page has none"
    page.wait_for_function(f"() => document.querySelectorAll('article mjx-container').length >= {maths}", timeout=PAGE_S * 1000)
    assert page.elsewhere == [], page.elsewhere


def test_the_search_box_finds_a_lesson(page, server):
    visit(page, server, "index.html")
    page.locator("button.search-button__button:visible").first.click()  # the search box opens in a dialog
    box = page.locator("#pst-search-dialog input[name='q']")
    box.fill("resampler")
    box.press("Enter")
    page.wait_for_url(re.compile(r"search\.html\?q=resampler"))
    results = page.locator("#search-results ul.search li a")
    results.first.wait_for(timeout=PAGE_S * 1000)
    found = results.evaluate_all("els => els.map(e => e.getAttribute('href'))")
    assert any("03_perceiver_resampler" in href for href in found), f"searching 'resampler' did not find lesson 03: {found}"


# ----------------------------------------------------------------------------------------------------------------
# the build script itself, without a browser


def test_without_the_tool_the_build_says_how_to_set_up(monkeypatch, capsys):
    real = importlib.util.find_spec
    monkeypatch.setattr(book.importlib.util, "find_spec", lambda name, *a: None if name == "myst_nb" else real(name, *a))
    assert book.main([]) == 2
    said = capsys.readouterr().err
    assert "myst-nb" in said and "python3 course.py book" in said and 'pip install -e ".[book]"' in said


def test_links_become_links_between_pages_downloads_or_github(tmp_path):
    pages = book.page_paths()
    copied = {"notebooks/student/01_attention_with_einops.ipynb", "assets/flamingo_architecture.png"}
    text = ("[lesson](../notebooks/01_attention_with_einops.ipynb#learning-goals) [code](../flamingo_lite/masks.py) "
            "[student](../notebooks/student/01_attention_with_einops.ipynb) ![arch](../assets/flamingo_architecture.png) "
            "[home](../README.md) [web](https://arxiv.org/abs/2204.14198) [here](#top)")  # fmt: skip
    out = book.rewrite_links(text, "docs/teaching.md", pages, copied)
    assert "[lesson](../notebooks/01_attention_with_einops.ipynb#learning-goals)" in out
    assert f"[code](https://github.com/{book.GITHUB_REPO}/blob/main/flamingo_lite/masks.py)" in out
    assert "[student](path:../notebooks/student/01_attention_with_einops.ipynb)" in out
    assert "![arch](../assets/flamingo_architecture.png)" in out
    assert "[home](../index.md)" in out and "(https://arxiv.org/abs/2204.14198)" in out and "[here](#top)" in out


def test_a_link_to_a_missing_file_is_an_error_that_names_it():
    with pytest.raises(book.BookError, match=r"docs/teaching\.md: the link 'gone\.md' points at docs/gone\.md"):
        book.rewrite_links("see [this](gone.md)", "docs/teaching.md", book.page_paths(), set())


def test_badges_become_plain_links_and_the_ci_badge_goes():
    readme = ("[![CI](https://github.com/o/r/actions/workflows/ci.yml/badge.svg)](https://github.com/o/r/actions/workflows/ci.yml)\n"
              "[![Binder](https://mybinder.org/badge_logo.svg)](https://mybinder.org/v2/gh/o/r/HEAD)")  # fmt: skip
    assert book.badges_as_links(readme) == "\n[Binder](https://mybinder.org/v2/gh/o/r/HEAD)"


def test_course_py_book_sets_up_then_builds_with_the_courses_python(monkeypatch, tmp_path):
    spec = importlib.util.spec_from_file_location("course_for_book", ROOT / "course.py")
    course = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(course)
    python, calls = tmp_path / "python", []
    monkeypatch.setattr(course, "setup", lambda: python)
    monkeypatch.setattr(course, "call", lambda cmd, env=None: calls.append([str(c) for c in cmd]) or 0)
    assert course.main(["book", "--out", "site"]) == 0
    assert calls == [[str(python), str(ROOT / "tools" / "build_book.py"), "--out", "site"]]
    assert "course.py book" in course.__doc__
