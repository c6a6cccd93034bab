"""Regenerate docs/bad_inputs.md from the bad-input cases of the test suite.

Usage, from the repository root::

    python tools/make_bad_inputs_table.py

The cases, their expected outcomes and the table layout live in
``tests/test_bad_inputs.py``; ``test_docs_table_is_up_to_date`` there fails when
the committed table differs from what this script writes.
"""

import importlib.util
import sys
import warnings
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    sys.path.insert(0, str(REPO_ROOT))
    spec = importlib.util.spec_from_file_location(
        "test_bad_inputs", REPO_ROOT / "tests" / "test_bad_inputs.py"
    )
    module = importlib.util.module_from_spec(spec)
    # dataclasses look their module up in sys.modules.
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        module.write_docs()
    print(f"wrote {module.DOCS_TABLE.relative_to(REPO_ROOT)}")


if __name__ == "__main__":
    main()
