"""What a plugin author gets told when a TaskSpec or a name is wrong, and the defaults."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dmtcore import TaskSpec
from dmtcore.errors import InvalidValueError
from dmtcore.tasks.names import InputSpec, validate_task_name


def spec(**overrides) -> TaskSpec:
    fields = {
        "name": "a.b",
        "description": "d",
        "input_shape": (1, 8, 8),
        "output": "binary",
        "datasets": lambda r: None,
    }
    return TaskSpec(**{**fields, **overrides})


def test_binary_defaults() -> None:
    task = spec()
    assert task.num_outputs == 2 and task.loss == "cross_entropy"
    assert task.primary_metric == "balanced_accuracy"


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"name": "../etc"}, "invalid task name '../etc'"),
        ({"name": "a/b"}, "invalid task name 'a/b'"),
        ({"name": "has space"}, "invalid task name 'has space'"),
        ({"name": "x" * 65}, "at most 64"),
        ({"name": "ünï"}, "invalid task name"),
        ({"output": "ranking"}, "unknown output kind 'ranking'"),
        ({"output": "multiclass"}, "multiclass tasks must set num_outputs"),
        ({"num_outputs": 3}, "binary tasks have num_outputs=2, got 3"),
        ({"metrics": ["f1"]}, "metric 'f1' is unknown for a binary task; valid: accuracy"),
        ({"metrics": ["miou"]}, "metric 'miou' does not fit a binary task"),
        ({"loss": "hinge"}, "loss 'hinge' is unknown for a binary task"),
        (
            {"primary_metric": "accuracy", "metrics": ["balanced_accuracy"]},
            "primary metric 'accuracy' is not among",
        ),
        ({"input_shape": (1, 2, 8)}, "height and width must be 4 to 4096"),
        ({"class_names": ["a", "b", "c"]}, "3 class names for 2 outputs"),
        ({"datasets": "data/"}, "datasets must be a callable"),
    ],
)
def test_invalid_specs_are_explained(overrides, message) -> None:
    with pytest.raises(InvalidValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        spec(**overrides)


@given(st.text(min_size=1, max_size=80))
def test_valid_task_names_are_never_paths(name: str) -> None:
    try:
        validate_task_name(name)
    except InvalidValueError:
        return
    assert "/" not in name and "\\" not in name and ".." not in name and not name.startswith(".")
    assert name == name.strip() and len(name) <= 64


@given(st.integers(1, 16), st.integers(4, 4096), st.integers(4, 4096))
def test_input_spec_round_trips(c: int, h: int, w: int) -> None:
    assert InputSpec.parse(str(InputSpec(c, h, w))) == InputSpec(c, h, w)
