"""NASiam genotype files (spec ``nasiam.md`` §5.2, §5.3): the text format, safe parsing, and the published ones.

A NASiam genotype names, per searched MLP head, one gene per layer; a gene is a list of op names of which only
the first is built (spec §2.4). The file holds ``str()`` of the reference's ``Genotype`` namedtuple on one line,
whose fields depend on the framework:

- SimSiam: ``Genotype(encoder=[...], predictor=[...])``;
- MoCo: ``Genotype(encoder=[...])``;
- SimCLR: ``Genotype(predictor=[...])``.

The reference reads the file with ``eval``; :func:`parse_genotype` walks its syntax tree instead and accepts only
the ``Genotype(field=<literal list>, ...)`` shape, so a hostile file is refused without running anything.

The reference search writes ``{dataset}_{arch}_sparse.txt`` while its pretraining reads ``{dataset}_{arch}.txt``
(spec §8 quirk 11); :func:`genotype_filename` gives the name the reader expects, which is also the published
files' convention. The seven published files ship, byte for byte, under ``published/{framework}/``.
"""

from __future__ import annotations

import ast
import os
from dataclasses import dataclass
from importlib import resources
from typing import TYPE_CHECKING

from sswp_fast.errors import ConfigError
from sswp_fast.nasiam.search_space import OPS
from sswp_fast.runtime.checkpoint import atomic_write_text

if TYPE_CHECKING:
    from importlib.resources.abc import Traversable

FRAMEWORKS: tuple[str, ...] = ("simsiam", "moco", "simclr")
"""The three NASiam frameworks, each with its own genotype fields."""

GENOTYPE_FIELDS: dict[str, tuple[str, ...]] = {
    "simsiam": ("encoder", "predictor"),
    "moco": ("encoder",),
    "simclr": ("predictor",),
}
"""The ``Genotype`` fields of each framework, in the reference's order (``encoder`` is the projector)."""



def _check_framework(framework: str) -> None:
    if framework not in GENOTYPE_FIELDS:
        raise ConfigError(f"unknown NASiam framework {framework!r}; use one of {', '.join(FRAMEWORKS)}")


def _genes_error(framework: str, field: str, value: object, source: str) -> str | None:
    """Why ``value`` is not a valid gene list for ``field`` of ``framework``, or None when it is."""
    if not isinstance(value, list) or not value:
        return f"{source}: {field} must be a non-empty list of genes like [['identity'], ...]"
    ops = OPS[framework]
    for i, gene in enumerate(value):
        if not isinstance(gene, list) or not gene or not all(isinstance(op, str) for op in gene):
            return f"{source}: {field} gene {i} must be a non-empty list of op names like ['identity'], got {gene!r}"
        for op in gene:
            if op not in ops:
                return (f"{source}: unknown {framework} op {op!r} in {field} gene {i}; "
                        f"use one of {', '.join(ops)}")
    return None


@dataclass(frozen=True)
class NasiamGenotype:
    """The searched heads of one NASiam framework: one gene (a list of op names, only ``gene[0]`` is built) per layer.

    SimSiam has ``encoder`` (the projector cell) and ``predictor``, MoCo only ``encoder``, SimCLR only
    ``predictor``; the field a framework lacks is None. The gene lists are copied at construction.
    """

    framework: str
    encoder: list[list[str]] | None = None
    predictor: list[list[str]] | None = None

    def __post_init__(self) -> None:
        _check_framework(self.framework)
        expected = GENOTYPE_FIELDS[self.framework]
        for field in ("encoder", "predictor"):
            value = getattr(self, field)
            if field not in expected:
                if value is not None:
                    raise ConfigError(f"a {self.framework} genotype has no {field}; "
                                      f"give only {' and '.join(expected)}")
                continue
            problem = _genes_error(self.framework, field, value, f"{self.framework} genotype")
            if problem:
                raise ConfigError(problem)
            object.__setattr__(self, field, [list(gene) for gene in value])

    def __hash__(self) -> int:
        return hash((self.framework, format_genotype(self)))

    def fields(self) -> dict[str, list[list[str]]]:
        """The framework's fields in file order, e.g. ``{"encoder": [...], "predictor": [...]}`` for SimSiam."""
        return {field: [list(gene) for gene in getattr(self, field)] for field in GENOTYPE_FIELDS[self.framework]}


def format_genotype(g: NasiamGenotype) -> str:
    """The reference's genotype text (``str()`` of its namedtuple), one line without a trailing newline."""
    return "Genotype(" + ", ".join(f"{field}={genes!r}" for field, genes in g.fields().items()) + ")"


def _field_hint(names: tuple[str, ...]) -> str:
    matching = [fw for fw in FRAMEWORKS if GENOTYPE_FIELDS[fw] == names]
    return f" (a {matching[0]} genotype)" if matching else ""


def parse_genotype(text: str, framework: str, *, source: str = "genotype text") -> NasiamGenotype:
    """Parse genotype ``text`` (one ``Genotype(...)`` call, an optional trailing newline) for ``framework``.

    Only the literal shape ``Genotype(<field>=<list of lists of op names>, ...)`` is accepted, checked on the
    syntax tree and read with ``ast.literal_eval``; nothing in the text is executed. The fields must be exactly
    the framework's (:data:`GENOTYPE_FIELDS`) and every op a valid op of the framework. ``source`` names the
    text in error messages (e.g. the file path).
    """
    _check_framework(framework)
    expected = GENOTYPE_FIELDS[framework]
    shape = f"Genotype({', '.join(f'{field}=[[...], ...]' for field in expected)})"
    fix = f"write it as one {shape} line of literal lists of op names"
    refused = f"{source} is not a NASiam genotype; {fix}"
    try:
        tree = ast.parse(text.removesuffix("\n"), mode="eval")
    except (SyntaxError, ValueError, RecursionError):
        raise ConfigError(refused) from None
    call = tree.body
    if not (isinstance(call, ast.Call) and isinstance(call.func, ast.Name) and call.func.id == "Genotype"
            and not call.args and all(kw.arg is not None for kw in call.keywords)):
        raise ConfigError(refused)
    names = tuple(str(kw.arg) for kw in call.keywords)
    if sorted(names) != sorted(expected):
        raise ConfigError(f"{source} has the fields ({', '.join(names)}){_field_hint(names)}, but a {framework} "
                          f"genotype has ({', '.join(expected)}); pass a genotype written for {framework}")
    values: dict[str, object] = {}
    for kw in call.keywords:
        try:
            values[str(kw.arg)] = ast.literal_eval(kw.value)
        except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
            raise ConfigError(f"{source}: {kw.arg} is not a literal list of genes; {fix}") from None
        problem = _genes_error(framework, str(kw.arg), values[str(kw.arg)], source)
        if problem:
            raise ConfigError(problem)
    return NasiamGenotype(framework, **values)  # type: ignore[arg-type]


def genotype_filename(dataset: str, arch: str) -> str:
    """The file name a genotype of a ``dataset`` / ``arch`` search gets: ``{dataset}_{arch}.txt``.

    This is the name the reference's pretraining reads and the published files use (the reference search
    appended ``_sparse``, spec §8 quirk 11).
    """
    for what, value in (("dataset", dataset), ("arch", arch)):
        if not value or "/" in value or "\\" in value:
            raise ConfigError(f"{what} name {value!r} cannot be part of a genotype file name; "
                              "use a plain name such as cifar10 or resnet18")
    return f"{dataset}_{arch}.txt"


def write_genotype(path: str | os.PathLike[str], g: NasiamGenotype) -> None:
    """Write ``g`` to ``path`` atomically in the reference format (one line, no trailing newline)."""
    atomic_write_text(path, format_genotype(g))


def read_genotype(path: str | os.PathLike[str], framework: str) -> NasiamGenotype:
    """Read and parse the ``framework`` genotype file at ``path`` (see :func:`parse_genotype`)."""
    _check_framework(framework)
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except FileNotFoundError:
        raise ConfigError(f"genotype file {os.fspath(path)} does not exist; check the path or use a published "
                          f"genotype ({', '.join(published_names(framework))})") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read genotype file {os.fspath(path)} ({type(exc).__name__}); "
                          "check it is a readable UTF-8 text file") from None
    return parse_genotype(text, framework, source=f"genotype file {os.fspath(path)}")


def _published_dir(framework: str) -> Traversable:
    _check_framework(framework)
    return resources.files(__package__).joinpath("published", framework)


def published_names(framework: str) -> list[str]:
    """The names of the genotypes published for ``framework`` with the reference, sorted (e.g. ``cifar10_resnet18``)."""
    folder = _published_dir(framework)
    return sorted(entry.name.removesuffix(".txt") for entry in folder.iterdir() if entry.name.endswith(".txt"))


def published_genotype(framework: str, name: str) -> NasiamGenotype:
    """The published ``framework`` genotype ``name`` (one of :func:`published_names`), as shipped by the reference."""
    available = published_names(framework)
    if name not in available:
        raise ConfigError(f"no published {framework} genotype {name!r}; available: {', '.join(available)}")
    text = _published_dir(framework).joinpath(f"{name}.txt").read_text(encoding="utf-8")
    return parse_genotype(text, framework, source=f"published {framework} genotype {name}")
