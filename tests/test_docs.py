"""The documentation describes what exists.

The site itself is built by ``.ci/run`` (``sphinx -W``); these checks are the
cheap part that runs with the tests: every public module and name is in the API
reference, the code of the markdown pages imports and calls what exists, the
parameters quoted by the user guide exist, the build needs no network, and the
gallery runs every example that can run.
"""

import ast
import importlib
import importlib.util
import inspect
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
MARKDOWN = [ROOT / "README.md", *sorted(DOCS.glob("*.md"))]
MARKDOWN += sorted((DOCS / "user_guide").glob("*.md"))


def _load_docs_helpers():
    spec = importlib.util.spec_from_file_location(
        "deepclust_docs", DOCS / "sphinxext" / "deepclust_docs.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


docs_helpers = _load_docs_helpers()


def _conf_value(name):
    """A literal assigned in docs/conf.py, read without executing the file."""
    tree = ast.parse((DOCS / "conf.py").read_text(encoding="utf-8"))
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(
            isinstance(target, ast.Name) and target.id == name
            for target in node.targets
        ):
            return ast.literal_eval(node.value)
    raise KeyError(name)


def _python_blocks(path):
    text = path.read_text(encoding="utf-8")
    return re.findall(r"^```python\n(.*?)^```", text, flags=re.MULTILINE | re.DOTALL)


# ---------------------------------------------------------------------------
# API reference
# ---------------------------------------------------------------------------


def test_every_public_module_is_in_the_api_reference():
    package = ROOT / "deepclust"
    public = {"deepclust"}
    public |= {
        f"deepclust.{path.stem}"
        for path in package.glob("*.py")
        if not path.stem.startswith("_")
    }
    public |= {
        f"deepclust.{path.parent.name}"
        for path in package.glob("*/__init__.py")
        if not path.parent.name.startswith("_")
    }
    documented = {module for module, _, _ in docs_helpers.API_MODULES}
    assert public - documented == set(), "add them to API_MODULES"


def test_every_public_name_has_a_page():
    pages = set(docs_helpers.documented_pages())
    for module_name, _, kinds, aliases in docs_helpers.api_entries():
        names = [name for group in kinds.values() for name in group]
        names += list(aliases)
        module_entry = next(
            entry for entry in docs_helpers.API_MODULES if entry[0] == module_name
        )
        expected = docs_helpers.documented_names(module_name, module_entry[2])
        assert sorted(names) == sorted(expected), module_name
        for name in expected:
            assert f"{module_name}.{name}" in pages or aliases[name] in pages


def test_input_errors_users_meet_are_documented():
    pages = set(docs_helpers.documented_pages())
    for name in ("InputError", "CorruptImageError", "SkippedInputsWarning"):
        assert f"deepclust._inputs.{name}" in pages


# ---------------------------------------------------------------------------
# Code and parameters quoted by the pages
# ---------------------------------------------------------------------------


def _deepclust_bindings(tree):
    """Local names bound by ``from deepclust... import ...`` in a block."""
    bindings = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith(
            "deepclust"
        ):
            module = importlib.import_module(node.module)
            for alias in node.names:
                assert hasattr(module, alias.name), f"{node.module}.{alias.name}"
                bindings[alias.asname or alias.name] = getattr(module, alias.name)
    return bindings


@pytest.mark.parametrize("path", MARKDOWN, ids=lambda path: path.name)
def test_markdown_code_calls_what_exists(path):
    # Check that each python block compiles, imports existing names and calls
    # the deepclust functions and classes it imports with existing keywords.
    for number, block in enumerate(_python_blocks(path), start=1):
        where = f"{path.name}, python block {number}"
        tree = ast.parse(block, filename=where)
        compile(tree, where, "exec")
        bindings = _deepclust_bindings(tree)
        for node in ast.walk(tree):
            if not (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Name)
                and node.func.id in bindings
            ):
                continue
            parameters = inspect.signature(bindings[node.func.id]).parameters
            if any(p.kind is p.VAR_KEYWORD for p in parameters.values()):
                continue
            for keyword in node.keywords:
                if keyword.arg is not None:
                    assert keyword.arg in parameters, (
                        f"{where}: {node.func.id} has no parameter {keyword.arg!r}"
                    )


def test_quoted_parameters_are_documented():
    pytest.importorskip("numpydoc")
    pattern = re.compile(r"^```\{deepclust-parameters\} (\S+)\n:names: (.+)$", re.M)
    quoted = 0
    for path in MARKDOWN:
        for target, names in pattern.findall(path.read_text(encoding="utf-8")):
            entries = docs_helpers.parameter_entries(target, names.split())
            assert [entry[0] for entry in entries] == names.split()
            quoted += 1
    assert quoted >= 5


# ---------------------------------------------------------------------------
# Offline build and gallery
# ---------------------------------------------------------------------------


def test_build_needs_no_network():
    extensions = _conf_value("extensions")
    assert "sphinx.ext.intersphinx" not in extensions
    assert _conf_value("html_theme_options")["icon_links"] == []
    text = (DOCS / "conf.py").read_text(encoding="utf-8")
    assert "http://" not in text and "https://" not in text


def test_gallery_runs_every_example_but_the_launcher_one():
    gallery = _conf_value("sphinx_gallery_conf")
    examples = sorted((ROOT / "examples").glob("*.py"))
    assert len(examples) >= 5
    assert {path.name for path in examples} == set(docs_helpers.GALLERY_ORDER)
    for path in examples:
        executed = re.search(gallery["filename_pattern"], str(path)) is not None
        assert executed == (path.name != "distributed_training.py"), path.name
        docstring = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8")))
        title, underline = docstring.splitlines()[:2]
        assert underline == "=" * len(title), path.name
    launcher = (ROOT / "examples" / "distributed_training.py").read_text()
    assert "not executed when the documentation is built" in launcher


def test_every_constant_is_described():
    pytest.importorskip("sphinx")
    descriptions = docs_helpers.data_descriptions()
    assert "deepclust.__version__" in descriptions
    for name, (_, text) in descriptions.items():
        assert text, f"describe {name} in DATA_DOCS or with a #: comment"
