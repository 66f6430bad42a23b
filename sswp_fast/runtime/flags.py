"""Command-line flags declared on the configuration dataclasses, and the flag combinations that do not combine.

A configuration field declared with :func:`flag` carries its :class:`Flag` (help text, accepted values, whether the
reference scripts have it) in its metadata; ``sswp_fast.cli`` builds each command's parser from those fields and
``sswp_fast.flag_docs`` writes docs/flags.md and README's "Flags that do not combine" table from the same data.
Fields without a :class:`Flag` (the stage or command a configuration is for) are not flags. Every configuration
checks its fields' values (:func:`check_choices`) and its :class:`Combination` table (:func:`check_combinations`)
through :meth:`sswp_fast.runtime.run_folder.RunOptions.check_flags`.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sswp_fast.errors import ConfigError

PROGRESS_MODES = ("auto", "on", "off")
"""Values of every command's ``--progress``."""


@dataclass(frozen=True)
class Flag:
    """How a configuration field appears on the command line.

    ``help``: the ``--help`` text (the default is appended where the command shows defaults); ``doc``: the text of
    docs/flags.md where it says more than ``help`` (Markdown); ``ours``: not a flag of the reference scripts
    (docs/flags.md marks it); ``choices``: the only values the configuration accepts; ``listed``: the parser
    itself refuses other values and lists them in the usage line; ``bare``: the value of the flag given without
    one (``--amp``); ``negatable``: a boolean that defaults to on in some command and has a ``--no-`` form;
    ``names``: the spellings when they are not ``--{field}``; ``required``: the command needs it;
    ``default_text``: how the default reads where the field's default is ``None`` until the configuration is
    resolved.
    """

    help: str
    doc: str | None = None
    ours: bool = False
    choices: tuple[str, ...] | None = None
    listed: bool = False
    bare: str | None = None
    negatable: bool = False
    names: tuple[str, ...] = ()
    required: bool = False
    default_text: str | None = None

    def spellings(self, name: str) -> tuple[str, ...]:
        """The option strings of the field ``name``."""
        return self.names or (f"--{name}",)

    def option(self, name: str) -> str:
        """The flag as messages name it: its first long spelling."""
        return next(s for s in self.spellings(name) if s.startswith("--"))


def flag(default: Any, help: str, **details: Any) -> Any:
    """A dataclass field with ``default`` that is a command-line flag (``details``: the other :class:`Flag`
    fields)."""
    return dataclasses.field(default=default, metadata={"flag": Flag(help, **details)})


def flag_fields(cls: type) -> list[tuple[dataclasses.Field, Flag, type]]:
    """(field, its :class:`Flag`, its value type with ``None`` left out) of every flag field of the dataclass
    ``cls``, in field order."""
    hints = typing.get_type_hints(cls)
    found = []
    for field in dataclasses.fields(cls):
        if "flag" in field.metadata:
            kind = hints[field.name]
            if isinstance(kind, types.UnionType):
                kind = next(k for k in typing.get_args(kind) if k is not type(None))
            found.append((field, field.metadata["flag"], kind))
    return found


def default_text(spec: Flag, value: object) -> str:
    """How ``--help`` and docs/flags.md show the default ``value`` of a flag: a value the usage line lists as it is
    typed, others as Python writes them, ``None`` as ``spec.default_text`` or ``none``."""
    if value is None:
        return spec.default_text or "none"
    return str(value) if spec.listed else repr(value)


def _alternatives(values: tuple[str, ...]) -> str:
    """``a, b or c`` (three values at most), else ``one of a, b, c, d``."""
    if len(values) > 3:
        return f"one of {', '.join(values)}"
    return f"{', '.join(values[:-1])} or {values[-1]}" if len(values) > 1 else values[0]


def check_choices(config: Any) -> None:
    """A one-line :class:`ConfigError` for the first flag field of ``config`` whose value is not one of its
    choices."""
    for field, spec, _ in flag_fields(type(config)):
        value = getattr(config, field.name)
        if spec.choices is not None and value not in spec.choices:
            raise ConfigError(f"{spec.option(field.name)} must be {_alternatives(spec.choices)}, got {value!r}")


@dataclass(frozen=True)
class Combination:
    """Flags that do not combine, a row of README's "Flags that do not combine" table: ``flags`` and ``outcome``
    are its two columns (Markdown). Where the configuration alone decides, ``refused`` says whether a
    configuration asks for the combination and ``error`` is the one-line message that names the problem and the
    fix (formatted with the configuration's fields). Where the device, the process count or the environment
    decides (``refused`` None), the row documents what planning the run does
    (:func:`sswp_fast.search.plan.plan_search`)."""

    flags: str
    outcome: str
    refused: Callable[[Any], bool] | None = None
    error: str = ""


def check_combinations(config: Any, table: tuple[Combination, ...]) -> None:
    """A one-line :class:`ConfigError` for the first row of ``table`` that refuses ``config``."""
    for row in table:
        if row.refused is not None and row.refused(config):
            raise ConfigError(row.error.format_map(vars(config)))
