"""Helpers of the documentation build (imported by docs/conf.py and the tests).

- :data:`API_MODULES` and :func:`write_api_pages`: the API reference is written
  from each public module's ``__all__`` at every build, so every public name has
  a page and a new name cannot be forgotten (``tests/test_docs.py`` checks that
  every public module is listed here).
- :func:`write_cli_help`: the ``--help`` of every ``deepclust`` command, as the
  parser prints it.
- :func:`figure_scraper`, :func:`limit_torch_threads` and :func:`gallery_order`:
  sphinx-gallery hooks.
- :func:`setup`: the ``deepclust-parameters`` directive, which quotes parameter
  entries of the docstrings in the user guide.

Nothing here imports Sphinx at module level, so the tests run without the docs
extra.
"""

import importlib
import inspect
import io
import os
import weakref
from contextlib import redirect_stdout
from pathlib import Path

# (module, title, names). names=None documents the module's ``__all__``; a list
# documents only those names (private modules whose few names users meet).
API_MODULES = [
    ("deepclust", "Estimators and loading", None),
    ("deepclust.estimators", "The estimator classes", None),
    ("deepclust.persistence", "Saving and loading without pickle", None),
    ("deepclust.encoders", "Frozen pretrained encoders and their embeddings", None),
    ("deepclust.onnx", "ONNX export and torch-free inference", None),
    ("deepclust.batch_inference", "Batch inference on Dask, Ray or Spark", None),
    ("deepclust.model_selection", "Choosing the number of clusters", None),
    ("deepclust.inspection", "Which inputs are shown, their clusters", None),
    ("deepclust.plotting", "Figures of a fitted model", None),
    ("deepclust.report", "HTML report", None),
    ("deepclust.metrics", "Clustering scores", None),
    ("deepclust.datasets", "Small data sets", None),
    (
        "deepclust._inputs",
        "Input errors and warnings",
        [
            "InputError",
            "CorruptImageError",
            "PathError",
            "SkippedInputsWarning",
        ],
    ),
    ("deepclust.losses", "Losses (torch)", None),
    ("deepclust.heads", "Heads (torch)", None),
    ("deepclust.backbones", "Backbones (torch)", None),
    ("deepclust.augment", "Augmentations (torch)", None),
    ("deepclust.models", "Networks (torch)", None),
    ("deepclust.objectives", "Training objectives (torch)", None),
    ("deepclust.distributed", "Distributed training helpers (torch)", None),
    ("deepclust.cli", "The deepclust command", ["main", "build_parser"]),
]

# Base classes whose members the class pages leave out (autodoc's
# :inherited-members: option): torch's, which its own reference documents, and
# the scikit-learn mixins whose docstrings link to pages of scikit-learn's site.
# The other scikit-learn methods (get_params, set_params, fit_predict,
# fit_transform, get_feature_names_out) are shown.
EXCLUDED_BASES = (
    "Module",
    "Sequential",
    "ModuleList",
    "_NormBase",
    "_BatchNorm",
    "Function",
    "BaseException",
    "_SetOutputMixin",
    "_MetadataRequester",
)

# What the public constants are, for their pages (a constant is a str, int or
# tuple, whose own docstring would be that of its type). A ``#:`` comment above a
# constant in the module that defines it is used when there is no entry here.
DATA_DOCS = {
    "deepclust.__version__": "The version of deepclust.",
    "deepclust.persistence.CONFIG_FILE": (
        "Name of the JSON file of a saved model: the format version, the library "
        "version, the estimator class, its parameters, the fitted attributes and "
        "the SHA-256 of the other two files."
    ),
    "deepclust.persistence.WEIGHTS_FILE": (
        "Name of the safetensors file of a saved model: the network's weights and "
        "buffers and the fitted arrays."
    ),
    "deepclust.persistence.HISTORY_FILE": (
        "Name of the JSON file of a saved model that holds the training history."
    ),
    "deepclust.persistence.MODEL_FORMAT_VERSION": (
        "Version of the saved-model format that :func:`save` writes; "
        ":func:`load` reads it and every earlier version."
    ),
}

_INTRO = """\
API reference
=============

One page per public name, generated from the docstrings. The estimators,
:func:`deepclust.load <deepclust.persistence.load>`, the ONNX runtime class and
the helpers of the user guide come first; the pure torch building blocks
(losses, heads, backbones, augmentations, networks and objectives) last. The
``deepclust`` command is described in :doc:`../user_guide/cli`.

.. toctree::
   :maxdepth: 1

"""


def documented_names(module_name, names=None):
    """The names documented for a module: ``names`` or its ``__all__``."""
    module = importlib.import_module(module_name)
    return list(names if names is not None else module.__all__)


def _kind(obj):
    if inspect.isclass(obj):
        if issubclass(obj, BaseException):
            return "exception"
        return "class"
    if callable(obj):
        return "function"
    return "data"


def api_entries():
    """For each module: (module, title, {kind: [names]}, {alias: canonical}).

    An object exported by several modules gets its page once: under the module
    that defines it when that module is listed, else under the first listed
    module that exports it; the other modules name it as an alias.
    """
    objects = {}  # id(obj) -> (module, name) of its page
    exported = []
    for module_name, title, names in API_MODULES:
        module = importlib.import_module(module_name)
        items = [
            (name, getattr(module, name))
            for name in documented_names(module_name, names)
        ]
        exported.append((module_name, title, items))
        for name, obj in items:
            if _kind(obj) == "data":
                continue
            home = getattr(obj, "__module__", None)
            if id(obj) not in objects or home == module_name:
                objects[id(obj)] = (module_name, name)
    entries = []
    for module_name, title, items in exported:
        kinds = {"class": [], "exception": [], "function": [], "data": []}
        aliases = {}
        for name, obj in items:
            kind = _kind(obj)
            if kind != "data" and objects[id(obj)] != (module_name, name):
                aliases[name] = "{}.{}".format(*objects[id(obj)])
            else:
                kinds[kind].append(name)
        entries.append((module_name, title, kinds, aliases))
    return entries


def data_descriptions():
    """For each documented constant: ``(repr of its value, description)``."""
    from sphinx.pycode import ModuleAnalyzer

    descriptions = {}
    for module_name, _, kinds, _ in api_entries():
        module = importlib.import_module(module_name)
        for name in kinds["data"]:
            full = f"{module_name}.{name}"
            text = DATA_DOCS.get(full)
            if text is None:
                try:
                    comments = ModuleAnalyzer.for_module(module_name).find_attr_docs()
                except Exception:  # no source to analyse
                    comments = {}
                text = " ".join(comments.get(("", name), [])).strip()
            descriptions[full] = (repr(getattr(module, name)), text)
    return descriptions


def documented_pages():
    """Fully qualified names that get a page of their own."""
    return [
        f"{module_name}.{name}"
        for module_name, _, kinds, _ in api_entries()
        for names in kinds.values()
        for name in names
    ]


_SECTIONS = (
    ("class", "Classes", "autosummary/class.rst"),
    ("exception", "Exceptions and warnings", "autosummary/class.rst"),
    ("function", "Functions", "autosummary/function.rst"),
    ("data", "Constants", "autosummary/data.rst"),
)
_ROLES = {"class": "class", "exception": "class", "function": "func"}


def _module_page(module_name, title, kinds, aliases):
    heading = f"``{module_name}``: {title}"
    lines = [heading, "=" * len(heading), ""]
    lines += [f".. automodule:: {module_name}", "   :no-members:", ""]
    lines += [f".. currentmodule:: {module_name}", ""]
    for kind, section, template in _SECTIONS:
        if not kinds[kind]:
            continue
        lines += [section, "-" * len(section), ""]
        lines += [
            ".. autosummary::",
            "   :toctree: generated",
            f"   :template: {template}",
            "   :nosignatures:",
            "",
        ]
        lines += [f"   {name}" for name in kinds[kind]]
        lines.append("")
    if aliases:
        lines += ["Also exported here", "------------------", ""]
        for name, target in aliases.items():
            obj = importlib.import_module(module_name)
            role = _ROLES[_kind(getattr(obj, name))]
            lines.append(
                f"- ``{module_name}.{name}`` is :{role}:`{target}` (the same object)."
            )
        lines.append("")
    return "\n".join(lines)


def _write_if_changed(path, text):
    # Unchanged files keep their time stamp, so a warm build rereads nothing.
    path = Path(path)
    if path.exists() and path.read_text(encoding="utf-8") == text:
        return
    path.write_text(text, encoding="utf-8")


def write_api_pages(directory):
    """Write ``index.rst`` and one page per module into ``directory``."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    index = _INTRO
    for module_name, title, kinds, aliases in api_entries():
        _write_if_changed(
            directory / f"{module_name}.rst",
            _module_page(module_name, title, kinds, aliases),
        )
        index += f"   {module_name}\n"
    _write_if_changed(directory / "index.rst", index)


def write_cli_help(path):
    """Write the ``--help`` of ``deepclust`` and of each command as reST blocks."""
    from deepclust.cli import build_parser

    previous = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = "88"  # argparse wraps at $COLUMNS
    try:
        parser = build_parser()
        subparsers = next(
            action
            for action in parser._actions
            if action.__class__.__name__ == "_SubParsersAction"
        )
        blocks = [("deepclust --help", parser)]
        blocks += [
            (f"deepclust {name} --help", command)
            for name, command in subparsers.choices.items()
        ]
        text = ""
        for title, command in blocks:
            buffer = io.StringIO()
            with redirect_stdout(buffer):
                command.print_help()
            body = "\n".join(
                "   " + line if line.strip() else ""
                for line in buffer.getvalue().splitlines()
            )
            heading = f"``{title}``"
            text += f"{heading}\n{'-' * len(heading)}\n\n.. code-block:: text\n\n"
            text += body + "\n\n"
    finally:
        if previous is None:
            del os.environ["COLUMNS"]
        else:
            os.environ["COLUMNS"] = previous
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    _write_if_changed(path, text)


# ---------------------------------------------------------------------------
# sphinx-gallery hooks
# ---------------------------------------------------------------------------

# Figures already shown, so that a figure kept in a variable is shown once.
_SHOWN = weakref.WeakSet()


def figure_scraper(block, block_vars, gallery_conf):
    """Show the matplotlib Figures that a code block left in its variables.

    deepclust.plotting builds its figures without pyplot (they never open a
    window), so sphinx-gallery's matplotlib scraper, which asks pyplot for its
    figures, does not see them. This scraper finds every Figure among the
    example's variables (the value of a last expression included) that no
    earlier block has shown.
    """
    from matplotlib.figure import Figure
    from sphinx_gallery.scrapers import figure_rst

    names = []
    figures = [
        value
        for value in list(block_vars["example_globals"].values())
        if isinstance(value, Figure) and value not in _SHOWN
    ]
    for figure, path in zip(figures, block_vars["image_path_iterator"], strict=False):
        figure.savefig(path, dpi=gallery_conf.get("figure_dpi", 100))
        _SHOWN.add(figure)
        names.append(path)
    return figure_rst(names, gallery_conf["src_dir"])


# The gallery's order: from a first clustering to deployment.
GALLERY_ORDER = (
    "cluster_digits.py",
    "plot_cluster_photos.py",
    "plot_results.py",
    "select_k.py",
    "features_pipeline.py",
    "onnx_inference.py",
    "distributed_training.py",
)


def gallery_order(filename):
    """Sort key of the gallery's examples (:data:`GALLERY_ORDER`, then by name)."""
    name = os.path.basename(filename)
    if name in GALLERY_ORDER:
        return GALLERY_ORDER.index(name), name
    return len(GALLERY_ORDER), name


def limit_torch_threads(gallery_conf, fname):
    """Run each example with ``DEEPCLUST_DOCS_THREADS`` torch threads (default 1).

    The examples train small networks on a few hundred images, for which extra
    threads gain little; on a shared machine, torch's spinning threads make the
    same training many times slower.
    """
    threads = int(os.environ.get("DEEPCLUST_DOCS_THREADS", "1"))
    if threads > 0:
        import torch

        torch.set_num_threads(threads)


# ---------------------------------------------------------------------------
# Sphinx extension: parameter entries quoted from the docstrings
# ---------------------------------------------------------------------------


def parameter_entries(target, names):
    """The numpydoc entries of ``names`` in the Parameters of ``target``.

    Parameters
    ----------
    target : str
        Dotted path of a class or function, e.g. ``"deepclust.CDCClusterer"``.
    names : list of str
        Parameter names, in the order wanted.

    Returns
    -------
    entries : list of (str, str, list of str)
        Name, type (with the default) and description lines of each parameter.
    """
    from numpydoc.docscrape import ClassDoc, FunctionDoc

    module_name, _, attribute = target.rpartition(".")
    obj = getattr(importlib.import_module(module_name), attribute)
    if inspect.isclass(obj):
        doc = ClassDoc(obj, config={"show_class_members": False})
    else:
        doc = FunctionDoc(obj)
    documented = {param.name: param for param in doc["Parameters"]}
    missing = [name for name in names if name not in documented]
    if missing:
        raise ValueError(f"{target} documents no parameter {', '.join(missing)}")
    return [
        (name, documented[name].type, list(documented[name].desc)) for name in names
    ]


def _parameters_rst(target, names):
    module_name, _, attribute = target.rpartition(".")
    obj = getattr(importlib.import_module(module_name), attribute)
    role = "class" if inspect.isclass(obj) else "func"
    lines = []
    for name, kind, desc in parameter_entries(target, names):
        lines.append(f"``{name}`` : {kind}")
        lines += ["   " + line if line.strip() else "" for line in desc]
        lines.append("")
    lines.append(f"(Quoted from the parameters of :{role}:`{target}`.)")
    return lines


def setup(app):
    """Register the ``deepclust-parameters`` directive.

    ``deepclust-parameters`` quotes parameter entries from a docstring, so that
    a page that discusses them shows the current defaults::

        .. deepclust-parameters:: deepclust.CDCClusterer
           :names: backbone max_epochs lr
    """
    from docutils import nodes
    from docutils.parsers.rst import Parser, directives
    from docutils.utils import new_document
    from sphinx.util.docutils import SphinxDirective

    class ParametersDirective(SphinxDirective):
        required_arguments = 1
        option_spec = {"names": directives.unchanged_required}

        def run(self):
            target = self.arguments[0]
            names = self.options["names"].split()
            try:
                lines = _parameters_rst(target, names)
            except (ValueError, AttributeError, ImportError) as exc:
                raise self.error(f"deepclust-parameters: {exc}") from None
            # Parsed as reStructuredText, also on markdown pages (whose nested
            # parsing would read it as markdown), as MyST's eval-rst does.
            document = self.state.document
            parsed = new_document(document["source"], document.settings)
            parsed.reporter = document.reporter
            Parser().parse("\n".join(lines), parsed)
            container = nodes.container(classes=["deepclust-parameters"])
            container.extend(parsed.children)
            return [container]

    app.add_directive("deepclust-parameters", ParametersDirective)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
