"""The Python code of README.md runs as written, so the README cannot drift."""

import contextlib
import io
import re
from pathlib import Path

import numpy as np
import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def python_blocks(text):
    """The ```python blocks of a markdown text, in order."""
    return re.findall(r"^```python\n(.*?)^```", text, flags=re.MULTILINE | re.DOTALL)


def test_readme_has_python_blocks():
    blocks = python_blocks(README.read_text(encoding="utf-8"))
    assert len(blocks) >= 2
    for number, block in enumerate(blocks, start=1):
        compile(block, f"README.md, python block {number}", "exec")


@pytest.mark.slow
def test_readme_python_blocks_run(tmp_path, monkeypatch):
    # Check that the blocks run in order in one fresh namespace, in an empty
    # working directory (the example writes digits.onnx there), with the
    # results they describe.
    monkeypatch.chdir(tmp_path)
    namespace = {"__name__": "__readme__"}
    output = io.StringIO()
    for number, block in enumerate(
        python_blocks(README.read_text(encoding="utf-8")), start=1
    ):
        code = compile(block, f"README.md, python block {number}", "exec")
        with contextlib.redirect_stdout(output):
            exec(code, namespace)

    # The first block: fit on the digits, scores, probabilities, ONNX export.
    assert "'acc'" in output.getvalue() and "'nmi'" in output.getvalue()
    assert namespace["cdc"].labels_.shape == (1797,)
    proba = namespace["proba"]
    assert proba.shape == (5, 10)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=1e-5)
    assert (tmp_path / "digits.onnx").is_file()
