"""A command's options made from the fields of a config dataclass (:mod:`zutiscli.config_fields`).

::

    @app.command("build")
    @from_config(IndexConfig, into="options")
    def build(images: ImagesArg = None, options: ConfigValues = None, output: OutputOpt = None, ...):
        config = IndexConfig(sources=list(images or []), **options)

The parameter named by ``into`` marks where the config's options go among the command's own
parameters (arguments, ``--json``, ``-o`` ...): :func:`from_config` replaces it by one Typer option
per field (in field order, with the field's default, help, names and presentation) and, when the
command runs, passes it the parsed values as ``{field name: value}``, each converted to what the
config holds (``--shard 3/8`` -> ``(3, 8)``, a path -> ``str``, ``--scale-min/--scale-max`` -> one
tuple); an option with ``text`` shows the field's default as typed (``--max-dets 1,10,100``).
Typer reads the command's parameters through ``inspect.signature``, which honours the
``__signature__`` set here. Decorators can be stacked, each with its own ``into``.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import inspect
import os
import types
import typing
from pathlib import Path
from typing import Annotated, Any, Callable, Iterable, Mapping, Optional

import typer

from zutiscli.cli.options import check_device, complete_model_names
from zutiscli.config_fields import OptionSpec, field_default, option_fields
from zutiscli.models.device import DEVICE_CHOICES

#: Annotation of the parameter that receives a config's values (the field name -> value mapping).
ConfigValues = Optional[dict]

_KEYWORD = inspect.Parameter.KEYWORD_ONLY


def _optional(annotation: Any) -> tuple[Any, bool]:
    """``X | None`` -> ``(X, True)``; anything else -> ``(annotation, False)``."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        args = [arg for arg in typing.get_args(annotation) if arg is not type(None)]
        if len(args) == 1 and len(typing.get_args(annotation)) == 2:
            return args[0], True
    return annotation, False


def _complete_choices(choices: tuple[str, ...]) -> Callable[[str], list[str]]:
    def complete(incomplete: str) -> list[str]:
        return [choice for choice in choices if choice.startswith(incomplete)]

    return complete


def _typer_option(names: tuple[str, ...], help: str, spec: OptionSpec) -> Any:
    """The ``typer.Option`` for names and help, with the spec's presentation and its kind's checks."""
    settings: dict[str, Any] = {"help": help, "hidden": spec.hidden, "show_default": spec.show_default}
    choices = spec.allowed()
    metavar = spec.metavar or ("|".join(choices) if choices else None)
    if spec.kind == "device":
        metavar = metavar or DEVICE_CHOICES
        settings["callback"] = check_device
    if spec.kind == "model":
        settings["autocompletion"] = complete_model_names
    elif choices:
        settings["autocompletion"] = _complete_choices(choices)
    if metavar:
        settings["metavar"] = metavar
    if spec.panel:
        settings["rich_help_panel"] = spec.panel
    return typer.Option(*names, **settings)


def _as_given(value: Any) -> Any:
    return value


def _fspath(value: Any) -> Any:
    return None if value is None else os.fspath(value)


def _parsed(parse: Callable[[str], Any], absent: Callable[[], Any]) -> Callable[[Any], Any]:
    """Text -> field value; an option not given (``None``) -> ``absent()``."""
    def convert(value: Any) -> Any:
        return absent() if value is None else parse(value)

    return convert


def _none() -> None:
    return None


def _options_of(field: dataclasses.Field, spec: OptionSpec, annotation: Any, default: Any
                ) -> tuple[list[inspect.Parameter], Callable[[list[Any]], Any]]:
    """The command parameters of one field, and the function from their values to the field's value."""
    empty = inspect.Parameter.empty
    if spec.parts:
        elements = typing.get_args(_optional(annotation)[0])
        parameters = []
        for number, (flag, help) in enumerate(spec.parts):
            name = flag.lstrip("-").replace("-", "_")
            element_default = empty if default is dataclasses.MISSING else default[number]
            option = _typer_option((flag,), help, spec)
            parameters.append(inspect.Parameter(name, _KEYWORD, default=element_default,
                                                annotation=Annotated[elements[number], option]))
        return parameters, tuple
    base, optional = _optional(annotation)
    if spec.parse is not None and spec.text is not None and default is not dataclasses.MISSING:
        # The option shows the default as the user would type it; not given, the field keeps it.
        field_value = default
        default = spec.text(field_value)
        base, convert = str, _parsed(spec.parse, lambda: copy.deepcopy(field_value))
    elif spec.parse is not None:
        base, convert = str, _parsed(spec.parse, _none)
    elif spec.kind == "path":
        base, convert = Path, _fspath
    else:
        convert = _as_given
    cli_type = Optional[base] if optional or default is None else base
    option = _typer_option(spec.names(field.name), spec.help, spec)
    parameter = inspect.Parameter(field.name, _KEYWORD, default=empty if default is dataclasses.MISSING else default,
                                  annotation=Annotated[cli_type, option])
    return [parameter], lambda values: convert(values[0])


def from_config(config: type, *, into: str, only: Iterable[str] | None = None, exclude: Iterable[str] = (),
                defaults: Mapping[str, Any] | None = None) -> Callable[[Callable], Callable]:
    """Decorator: the command's parameter ``into`` becomes the options of the ``config`` dataclass.

    ``only`` / ``exclude`` choose among the fields that are options (the others are
    :func:`zutiscli.config_fields.not_an_option`); ``defaults`` replaces the dataclass defaults
    of some fields for this command (e.g. ``zutis synth scenes`` makes 100 scenes by default).
    The command receives ``into`` as a dict ``{field name: value}`` of the chosen fields.
    """
    chosen = None if only is None else set(only)
    skipped = set(exclude)
    replaced = dict(defaults or {})

    def decorate(function: Callable) -> Callable:
        own = list(inspect.signature(function, eval_str=True).parameters.values())
        names = [parameter.name for parameter in own]
        if into not in names:
            raise TypeError(f"{function.__name__}() has no parameter {into!r} to receive the {config.__name__} options")
        generated: list[inspect.Parameter] = []
        rebuild: list[tuple[str, list[str], Callable[[list[Any]], Any]]] = []
        for field, spec, annotation in option_fields(config):
            if field.name in skipped or (chosen is not None and field.name not in chosen):
                continue
            default = replaced.get(field.name, field_default(field))
            parameters, convert = _options_of(field, spec, annotation, default)
            generated.extend(parameters)
            rebuild.append((field.name, [parameter.name for parameter in parameters], convert))
        unknown = set(replaced) - {name for name, _, _ in rebuild}
        if unknown:
            raise TypeError(f"defaults for fields that are no options here: {', '.join(sorted(unknown))}")
        clash = {parameter.name for parameter in generated} & (set(names) - {into})
        if clash:
            raise TypeError(f"{function.__name__}(): parameters {', '.join(sorted(clash))} are also {config.__name__} options")

        position = names.index(into)
        parameters = [parameter.replace(kind=_KEYWORD) for parameter in own]
        parameters[position:position + 1] = generated

        @functools.wraps(function)
        def command(**given: Any) -> Any:
            values = {}
            for field_name, parameter_names, convert in rebuild:
                values[field_name] = convert([given.pop(name) for name in parameter_names])
            given[into] = values
            return function(**given)

        command.__signature__ = inspect.Signature(parameters)  # type: ignore[attr-defined]
        command.__annotations__ = {}  # the signature holds the (evaluated) annotations
        return command

    return decorate
