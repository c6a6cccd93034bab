"""The two estimators declare their shared parameters identically.

Each estimator writes its ``__init__`` signature and its parameter docs in its own
source, as scikit-learn asks; these tests keep the parameters both have in sync:
same default, same kind, same constraints and the same documentation text.
"""

import ast
import inspect
import re

import pytest

from deepclust import CDCClusterer, ContrastiveDisentangler
from deepclust.estimators._base import SHARED_CONSTRAINTS

ESTIMATORS = [ContrastiveDisentangler, CDCClusterer]


def _parameter_docs(estimator_class) -> dict[str, str]:
    """Parameter name -> its numpydoc entry (type line and description)."""
    doc = inspect.getdoc(estimator_class)
    section = doc.split("Parameters\n----------\n", 1)[1].split("\nAttributes\n", 1)[0]
    entries = re.split(r"\n(?=[a-z_]+ : )", section)
    return {entry.split(" : ", 1)[0]: entry.strip() for entry in entries}


def _signature(estimator_class):
    return inspect.signature(estimator_class.__init__).parameters


def test_shared_parameters_are_the_same():
    # Check that the parameters both estimators have share default, kind,
    # constraints and documentation, and that they are the shared table's.
    cd, cdc = (_signature(e) for e in ESTIMATORS)
    shared = (set(cd) & set(cdc)) - {"self", "transform_output"}
    assert shared == set(SHARED_CONSTRAINTS)
    cd_docs, cdc_docs = (_parameter_docs(e) for e in ESTIMATORS)
    for name in shared:
        assert cd[name].default == cdc[name].default, name
        assert cd[name].kind is cdc[name].kind is inspect.Parameter.KEYWORD_ONLY, name
        assert cd_docs[name] == cdc_docs[name], name
        for estimator_class in ESTIMATORS:
            constraints = estimator_class._parameter_constraints[name]
            assert constraints is SHARED_CONSTRAINTS[name], name


@pytest.mark.parametrize("estimator_class", ESTIMATORS, ids=["CD", "CDC"])
def test_every_parameter_is_documented_and_constrained(estimator_class):
    # Check that the signature, the docstring and the constraints list the same
    # parameters, in the same order for the first two, and that __init__ only
    # stores them.
    names = [name for name in _signature(estimator_class) if name != "self"]
    assert list(_parameter_docs(estimator_class)) == names
    assert set(estimator_class._parameter_constraints) == set(names)
    source = inspect.getsource(estimator_class.__init__)
    body = [line.strip() for line in source.split("):\n", 1)[1].splitlines()]
    assert body == [f"self.{name} = {name}" for name in names]


@pytest.mark.parametrize("estimator_class", ESTIMATORS, ids=["CD", "CDC"])
def test_documented_defaults_match_the_signature(estimator_class):
    # Check that each "default=..." of the docstring is the signature's default.
    docs = _parameter_docs(estimator_class)
    for name, parameter in _signature(estimator_class).items():
        if name == "self":
            continue
        documented = re.search(r"default=(.+)$", docs[name].splitlines()[0])
        assert documented, f"{name} has no default in its docstring"
        assert ast.literal_eval(documented.group(1)) == parameter.default, name
