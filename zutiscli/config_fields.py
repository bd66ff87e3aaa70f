"""Config dataclass fields that carry their own command-line presentation.

A stage's options are declared once, as the fields of its config dataclass; each field says its
default, its help text and how the command line shows it::

    @dataclass(frozen=True)
    class IndexConfig:
        sources: Sequence[str] = not_an_option(())  # the command's IMAGES arguments
        batch_size: int = option(64, "Images per forward pass.")
        shard: tuple[int, int] | None = option(
            None, "Embed slice I of N (0-based).", metavar="I/N", parse=parse_shard, show_default=False)
        seed: int = not_an_option(0, "set through the Python API only")

The command line (:mod:`zutiscli.cli.from_config`) turns the fields into the command's options, in
field order, with the dataclass defaults; the Python API (:mod:`zutiscli.api`) into keyword
arguments. Every field is either an :func:`option` (with help text) or explicitly
:func:`not_an_option`, so that a new field cannot reach users without being described.

This module is imported by config modules of ``pipeline/`` and ``data/``, and by the command line
while it builds ``--help``: it imports nothing beyond the standard library.
"""

from __future__ import annotations

import dataclasses
import sys
from dataclasses import MISSING, dataclass
from typing import Any, Callable, Sequence

#: Key of a field's ``metadata`` that holds its :class:`OptionSpec` (or :data:`NOT_AN_OPTION`).
METADATA_KEY = "zutis.option"

#: Metadata value of a field that is deliberately no command-line option.
NOT_AN_OPTION = "not an option"

#: What an option's value may name (:attr:`OptionSpec.kind`).
KINDS = ("path", "model", "device")


@dataclass(frozen=True)
class OptionSpec:
    """How one config field appears on the command line.

    - ``help``: the option's help text (required, one or more sentences).
    - ``flags``: the option's names in the order ``--help`` lists them; empty = ``--field-name``.
      A boolean with an "off" name gives both as one, in Click's way: ``"--vis/--no-vis"``.
    - ``short``: a one-letter alias such as ``"-n"``, appended to ``flags``.
    - ``metavar``: the placeholder shown for the value (default: from the type, or ``choices``).
    - ``choices``: the values the field accepts, or a function returning them (for a registry that
      plug-ins extend: asked each time); the metavar and shell completion show them, and
      :func:`check_choices` (first in the config's ``validate()``) refuses any other.
    - ``hidden``: left out of ``--help``, man pages and completion.
    - ``panel``: the rich help panel the option is listed under.
    - ``show_default``: ``False`` to hide ``[default: ...]``, or text to show instead of the value.
    - ``parse``: a function from the command-line text to the field's value (e.g. ``"3/8"`` ->
      ``(3, 8)``); it raises :class:`zutiscli.errors.UsageError` for malformed text.
    - ``text``: with ``parse``, the inverse: a field value as the command line writes it
      (``(1, 10, 100)`` -> ``"1,10,100"``). The option's default is then the text of the field's
      default; ``None`` text means "not given", which leaves the field at its default.
    - ``kind``: what the value names, for the command line's checks and completion: ``"path"``
      (a file or directory; the field holds it as ``str``), ``"model"`` (an open_clip model name),
      ``"device"`` (checked while the options are parsed).
    - ``parts``: for a tuple field shown as one option per element: ``(flag, help)`` per element;
      ``flags`` and ``help`` are then unused, the field's default gives each element's default.
    """

    help: str
    flags: tuple[str, ...] = ()
    short: str | None = None
    metavar: str | None = None
    choices: tuple[str, ...] | Callable[[], Sequence[str]] = ()
    hidden: bool = False
    panel: str | None = None
    show_default: bool | str = True
    parse: Callable[[str], Any] | None = None
    text: Callable[[Any], str | None] | None = None
    kind: str | None = None
    parts: tuple[tuple[str, str], ...] = ()

    def allowed(self) -> tuple[str, ...]:
        """The values the option accepts now (``()``: any)."""
        return tuple(self.choices()) if callable(self.choices) else self.choices

    def names(self, field_name: str) -> tuple[str, ...]:
        """The option's names: ``flags`` (or ``--field-name``) then ``short``."""
        names = self.flags or ("--" + field_name.replace("_", "-"),)
        return names + ((self.short,) if self.short else ())


def _field(default: Any, default_factory: Any, metadata: Any) -> Any:
    if default is not MISSING and default_factory is not MISSING:
        raise ValueError("give a default or a default_factory, not both")
    return dataclasses.field(default=default, default_factory=default_factory, metadata={METADATA_KEY: metadata})


def split_commas(text: str) -> list[str]:
    """``"a, b,,c"`` -> ``["a", "b", "c"]``: the items of a comma-separated option value."""
    return [part.strip() for part in text.split(",") if part.strip()]


def join_commas(values: Sequence[object]) -> str:
    """The comma-separated text of ``values`` (the inverse of :func:`split_commas`)."""
    return ",".join(map(str, values))


def option(
    default: Any = MISSING,
    help: str = "",
    *,
    flag: str | tuple[str, ...] = (),
    short: str | None = None,
    metavar: str | None = None,
    choices: Sequence[str] | Callable[[], Sequence[str]] = (),
    hidden: bool = False,
    panel: str | None = None,
    show_default: bool | str = True,
    parse: Callable[[str], Any] | None = None,
    text: Callable[[Any], str | None] | None = None,
    kind: str | None = None,
    parts: tuple[tuple[str, str], ...] = (),
    default_factory: Any = MISSING,
) -> Any:
    """A dataclass field that is a command-line option; see :class:`OptionSpec` for the arguments.

    ``flag`` is one name or a tuple of names (``("-k", "--top-k")``); without it the option is
    called ``--field-name``.
    """
    if not (help.strip() or parts):
        raise ValueError("an option needs its help text")
    if parts and any(not text.strip() for _, text in parts):
        raise ValueError("each part of an option needs its help text")
    if kind is not None and kind not in KINDS:
        raise ValueError(f"option kind {kind!r} is none of {', '.join(KINDS)}")
    if text is not None and parse is None:
        raise ValueError("an option with text= needs parse=, the way back from the text")
    spec = OptionSpec(help=help, flags=(flag,) if isinstance(flag, str) else tuple(flag), short=short,
                      metavar=metavar, choices=choices if callable(choices) else tuple(choices), hidden=hidden,
                      panel=panel, show_default=show_default, parse=parse, text=text, kind=kind, parts=tuple(parts))
    return _field(default, default_factory, spec)


def not_an_option(default: Any = MISSING, why: str = "", *, default_factory: Any = MISSING) -> Any:
    """A dataclass field that is deliberately no command-line option.

    For values the command fills in itself (its arguments, a list built from two options) and for
    settings only the Python API exposes. ``why`` is for the reader of the code.
    """
    return _field(default, default_factory, NOT_AN_OPTION)


def option_spec(field: dataclasses.Field) -> OptionSpec | None:
    """A field's :class:`OptionSpec`; ``None`` when it is :func:`not_an_option`.

    Raises ``TypeError`` for a field declared with neither, naming it.
    """
    spec = field.metadata.get(METADATA_KEY)
    if spec is None:
        raise TypeError(f"config field {field.name!r} is declared with neither option(...) nor not_an_option(...); "
                        "give it its help text")
    return None if spec == NOT_AN_OPTION else spec


def field_default(field: dataclasses.Field) -> Any:
    """A field's default value (``MISSING`` when it has none)."""
    if field.default is not MISSING:
        return field.default
    if field.default_factory is not MISSING:
        return field.default_factory()
    return MISSING


def check_choices(config: Any) -> None:
    """Refuse a value outside its option's ``choices``, for every option of the config dataclass
    ``config`` that declares them: :class:`zutiscli.errors.UsageError` naming the option, the value
    and the choices. Each element of a tuple value is checked; ``None`` passes where it is the
    field's default (the option not given).

    Configs call it first in their ``validate()``, so the choices are written once, in the field.
    """
    from zutiscli.errors import UsageError

    for field in dataclasses.fields(config):
        spec = option_spec(field)
        choices = spec.allowed() if spec is not None else ()
        if not choices:
            continue
        value = getattr(config, field.name)
        if value is None and field_default(field) is None:
            continue
        for item in value if isinstance(value, (tuple, list, frozenset, set)) else (value,):
            if item not in choices:
                raise UsageError(f"{spec.names(field.name)[0]} {item!r} is not one of {', '.join(choices)}")


def option_fields(cls: type) -> list[tuple[dataclasses.Field, OptionSpec, Any]]:
    """``(field, spec, type)`` for each command-line option of a config dataclass, in field order.

    ``type`` is the field's annotation, evaluated in the config's module (configs may write ``from
    __future__ import annotations``). Fields that are :func:`not_an_option` are left out, and their
    annotations are not evaluated: they may name types imported for type checkers only.
    """
    module = sys.modules.get(cls.__module__)
    namespace = dict(vars(module)) if module is not None else {}
    found = []
    for field in dataclasses.fields(cls):
        spec = option_spec(field)
        if spec is not None:
            annotation = field.type
            if isinstance(annotation, str):
                annotation = eval(annotation, namespace)  # noqa: S307 - what typing.get_type_hints does
            found.append((field, spec, annotation))
    return found


# ---- options that several stages share, declared once -----------------------------------------
#: Help of every ``--device`` option (its metavar is :data:`zutiscli.models.device.DEVICE_CHOICES`).
DEVICE_HELP = "Where to run; auto = CUDA when available."
#: Values and help of every ``--precision`` option.
PRECISION_CHOICES = ("auto", "fp32", "bf16", "fp16")
PRECISION_HELP = "Weights' precision; auto = fp16 on CUDA, bf16 on CPUs with bf16 units, else fp32."


def device_option(default: str = "auto") -> Any:
    """The ``--device`` option of a config (``auto``, ``cpu``, ``cuda``, ``cuda:N``)."""
    return option(default, DEVICE_HELP, kind="device")


def precision_option(default: str = "auto") -> Any:
    """The ``--precision`` option of a config (the weights' precision)."""
    return option(default, PRECISION_HELP, choices=PRECISION_CHOICES)
