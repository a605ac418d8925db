"""Sphinx configuration of the course's website (built by `python3 course.py book`, see tools/build_book.py).

The pages are made from the committed, executed notebooks as they are: nothing is executed here. MathJax is served
from the site itself (sphinx-mathjax-offline), so the pages load nothing from other hosts when read.
"""
import os

project = "Flamingo, from scratch"
author = "the flamingo-lite authors"
copyright = "the flamingo-lite authors, MIT license"
GITHUB_REPO = os.environ.get("FLAMINGO_BOOK_REPO", "flamingo-from-scratch/flamingo-lite")

extensions = [
    "myst_nb",  # notebooks and Markdown (MyST) pages
    "sphinx.ext.mathjax",
    "sphinx-mathjax-offline",  # a local MathJax 3 in _static/mathjax instead of a CDN
]
root_doc = "index"
exclude_patterns = ["notebooks/student/**", "**/.ipynb_checkpoints"]

# MyST-NB: the committed outputs are the outputs; no kernel is started.
nb_execution_mode = "off"
nb_ipywidgets_js = {}  # the widgets need a live kernel anyway; the pages say so and link Binder and Colab
myst_enable_extensions = ["dollarmath", "amsmath", "colon_fence"]
myst_heading_anchors = 3  # links such as teaching.md#running-it-for-a-room

html_theme = "sphinx_book_theme"
html_title = project
html_static_path = ["_static"]
html_css_files = ["course.css"]
html_last_updated_fmt = None
html_theme_options = {
    "repository_url": f"https://github.com/{GITHUB_REPO}",
    "use_repository_button": True,
    "show_toc_level": 2,
}
