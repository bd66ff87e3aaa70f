"""Every option that declares ``choices`` is checked against them by its config's ``validate()``.

The choices are written once, in the field (:func:`zutiscli.config_fields.option`); the command
line shows them and :func:`zutiscli.config_fields.check_choices` refuses anything else, first in
each ``validate()``. The configs are found by walking the config modules, so a new config (or a new
option with choices) is covered without being listed here.
"""

from __future__ import annotations

import dataclasses
import importlib
import pkgutil

import pytest

import zutiscli.data
import zutiscli.pipeline
from zutiscli.config_fields import check_choices, field_default, option, option_spec
from zutiscli.errors import UsageError


def _configs_with_choices() -> list[tuple[type, str, tuple[str, ...]]]:
    found = []
    for package in (zutiscli.pipeline, zutiscli.data):
        for module_info in pkgutil.iter_modules(package.__path__):
            if not module_info.name.endswith("config"):
                continue
            module = importlib.import_module(f"{package.__name__}.{module_info.name}")
            for value in vars(module).values():
                if not (isinstance(value, type) and dataclasses.is_dataclass(value)
                        and value.__module__ == module.__name__ and "validate" in vars(value)):
                    continue
                for field in dataclasses.fields(value):
                    spec = option_spec(field)
                    if spec is not None and spec.allowed():
                        found.append((value, field.name, spec.allowed()))
    return found


CHOICES = _configs_with_choices()


def _bare(cls: type, **values) -> object:
    """An instance of ``cls`` with its defaults (``None`` where a field has none) and ``values``,
    made without ``__init__`` (whose required arguments do not matter to the choices)."""
    instance = object.__new__(cls)
    for field in dataclasses.fields(cls):
        default = field_default(field)
        object.__setattr__(instance, field.name, None if default is dataclasses.MISSING else default)
    for name, value in values.items():
        object.__setattr__(instance, name, value)
    return instance


def test_the_walk_finds_the_configs_with_choices() -> None:
    names = {(cls.__name__, field) for cls, field, _ in CHOICES}
    assert {("PredictConfig", "refine"), ("TrainConfig", "precision"), ("SynthConfig", "split"),
            ("DemoConfig", "model"), ("EvaluateConfig", "backend"),
            ("CopyPasteDatasetConfig", "image_format")} <= names


@pytest.mark.parametrize(("cls", "field", "choices"), CHOICES, ids=[f"{c.__name__}.{f}" for c, f, _ in CHOICES])
def test_validate_refuses_a_value_outside_the_choices_naming_the_option(cls, field, choices) -> None:
    flag = option_spec(next(f for f in dataclasses.fields(cls) if f.name == field)).names(field)[0]
    with pytest.raises(UsageError) as refused:
        _bare(cls, **{field: "no-such-choice"}).validate()
    message = str(refused.value)
    assert message.startswith(f"{flag} 'no-such-choice' is not one of ")
    assert all(choice in message for choice in choices)


@dataclasses.dataclass(frozen=True)
class _Example:
    mode: str = option("a", "A mode.", choices=("a", "b"))
    given: str | None = option(None, "Given or not.", choices=("x",))
    many: tuple[str, ...] = option(("a",), "Several.", flag="--many", choices=("a", "b"))


def test_check_choices_takes_the_choices_none_when_not_given_and_each_element_of_a_tuple() -> None:
    check_choices(_Example())
    check_choices(_Example(mode="b", given="x", many=("a", "b")))
    with pytest.raises(UsageError, match=r"^--given 'y' is not one of x$"):
        check_choices(_Example(given="y"))
    with pytest.raises(UsageError, match=r"^--many 'c' is not one of a, b$"):
        check_choices(_Example(many=("a", "c")))
    with pytest.raises(UsageError, match=r"^--mode None is not one of a, b$"):
        check_choices(_Example(mode=None))


_REGISTERED = ["a"]


@dataclasses.dataclass(frozen=True)
class _Registry:
    name: str = option("a", "A registered name.", choices=lambda: tuple(_REGISTERED))


def test_choices_given_as_a_function_are_asked_at_each_check() -> None:
    with pytest.raises(UsageError, match=r"^--name 'b' is not one of a$"):
        check_choices(_Registry(name="b"))
    _REGISTERED.append("b")
    try:
        check_choices(_Registry(name="b"))
    finally:
        _REGISTERED.remove("b")
