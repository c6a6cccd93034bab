"""Sphinx configuration of the deepclust documentation.

Build (from the repository root, after ``pip install -e ".[docs]"``)::

    .venv/bin/python -m sphinx -W --keep-going -b html docs docs/_build/html

The build is offline: no intersphinx inventories, no images or scripts from the
network. It runs the gallery scripts of ``examples/``.
"""

import sys
from pathlib import Path

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE / "sphinxext"))

import deepclust_docs  # noqa: E402

import deepclust  # noqa: E402

project = "deepclust"
author = "The deepclust developers"
copyright = "the deepclust developers, BSD-3-Clause"
release = deepclust.__version__
version = release

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "numpydoc",
    "myst_parser",
    "sphinx_gallery.gen_gallery",
    "deepclust_docs",
]

source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
root_doc = "index"
exclude_patterns = [
    "_build",
    "sphinxext",
    "auto_examples/*.ipynb",
    "auto_examples/*.py",
    "auto_examples/*.zip",
    "auto_examples/*.json",
    "auto_examples/*.md5",
    "auto_examples/*.codeobj.json",
    "sg_execution_times.rst",
    "auto_examples/sg_execution_times.rst",
]
templates_path = ["_templates"]

# --- API reference -------------------------------------------------------------
# One page per public name, written from the modules' __all__ (see deepclust_docs).
deepclust_docs.write_api_pages(HERE / "api")
deepclust_docs.write_cli_help(HERE / "user_guide" / "generated" / "cli_help.rst.inc")

autosummary_generate = True
autosummary_imported_members = True
autosummary_context = {
    "excluded_bases": ", ".join(deepclust_docs.EXCLUDED_BASES),
    "data_descriptions": deepclust_docs.data_descriptions(),
}
autodoc_default_options = {"member-order": "bysource"}
autodoc_typehints = "none"  # the numpydoc sections give the types
autodoc_inherit_docstrings = True
add_module_names = False

# Class members are documented by the class template (autodoc's :members:), as
# scikit-learn does, not by numpydoc's member tables.
numpydoc_show_class_members = False
numpydoc_class_members_toctree = False
numpydoc_attributes_as_param_list = True
numpydoc_xref_param_type = False

# --- Markdown (the notes in docs/*.md) -----------------------------------------
myst_enable_extensions = ["colon_fence", "deflist"]
myst_heading_anchors = 3

# --- Example gallery -----------------------------------------------------------
sphinx_gallery_conf = {
    "examples_dirs": "../examples",
    "gallery_dirs": "auto_examples",
    # Execute every example but distributed_training.py, which needs torchrun: it
    # is shown, not run (its page says so).
    "filename_pattern": r"/(?!distributed_training\.py)[^/]+\.py$",
    "ignore_pattern": r"__init__\.py",
    "image_scrapers": ("matplotlib", "deepclust_docs.figure_scraper"),
    # Each example runs with one torch thread (DEEPCLUST_DOCS_THREADS=N for more).
    "reset_modules": ("matplotlib", "deepclust_docs.limit_torch_threads"),
    "doc_module": ("deepclust",),
    "backreferences_dir": "api/generated/backreferences",
    "abort_on_example_error": True,
    "remove_config_comments": True,
    "download_all_examples": False,
    "show_signature": False,
    "within_subsection_order": "deepclust_docs.gallery_order",
    "min_reported_time": 1,
    # The timing pages load jQuery and DataTables from CDNs: left out, so that the
    # site needs no network (the build log and each example page give the times).
    "write_computation_times": False,
}

# --- HTML ----------------------------------------------------------------------
html_theme = "pydata_sphinx_theme"
html_title = f"deepclust {release}"
html_static_path = []
html_last_updated_fmt = None
html_copy_source = False
html_show_sourcelink = False
# Nothing that needs the network: no icon links to external sites, no version
# switcher, no announcement fetched from a URL, no analytics.
html_theme_options = {
    "icon_links": [],
    "navbar_end": ["theme-switcher"],
    "show_prev_next": True,
    "show_toc_level": 2,
    "navigation_with_keys": False,
    "footer_start": ["copyright"],
    "footer_end": [],
}
html_context = {"default_mode": "light"}
