"""Built-in reference architectures (spec §13): DARTS-V2 and P-DARTS as whole-network cell lists.

Each is the published pair of cell genotypes, normal and reduction, expanded to the spec §8.1 format that
``net.config`` uses: one list of 8 ``(op_name, input_index)`` pairs per cell, the reduction genotype at the
reduction positions ``layers // 3`` and ``2 * layers // 3`` (cells 6 and 13 for the reference's 20 cells),
the normal genotype everywhere else. They are what ``--arch_name darts|pdarts`` selects when no search folder
is given.
"""

from __future__ import annotations

from sswp_fast.errors import ConfigError
from sswp_fast.search.export import Arch

Genotype = tuple[tuple[str, int], ...]

DEFAULT_LAYERS = 20

_DARTS_V2_NORMAL: Genotype = (
    ("sep_conv_3x3", 0), ("sep_conv_3x3", 1),
    ("sep_conv_3x3", 0), ("sep_conv_3x3", 1),
    ("sep_conv_3x3", 1), ("skip_connect", 0),
    ("skip_connect", 0), ("dil_conv_3x3", 2),
)
_DARTS_V2_REDUCTION: Genotype = (
    ("max_pool_3x3", 0), ("max_pool_3x3", 1),
    ("skip_connect", 2), ("max_pool_3x3", 1),
    ("max_pool_3x3", 0), ("skip_connect", 2),
    ("skip_connect", 2), ("max_pool_3x3", 1),
)
_PDARTS_NORMAL: Genotype = (
    ("skip_connect", 0), ("dil_conv_3x3", 1),
    ("skip_connect", 0), ("sep_conv_3x3", 1),
    ("sep_conv_3x3", 1), ("sep_conv_3x3", 3),
    ("sep_conv_3x3", 0), ("dil_conv_5x5", 4),
)
_PDARTS_REDUCTION: Genotype = (
    ("avg_pool_3x3", 0), ("sep_conv_5x5", 1),
    ("sep_conv_3x3", 0), ("dil_conv_5x5", 2),
    ("max_pool_3x3", 0), ("dil_conv_3x3", 1),
    ("dil_conv_3x3", 1), ("dil_conv_5x5", 3),
)

_GENOTYPES: dict[str, tuple[Genotype, Genotype]] = {
    "darts": (_DARTS_V2_NORMAL, _DARTS_V2_REDUCTION),
    "pdarts": (_PDARTS_NORMAL, _PDARTS_REDUCTION),
}

BUILTIN_NAMES: tuple[str, ...] = ("darts", "pdarts")
"""Names accepted by :func:`builtin_architecture`."""


def builtin_architecture(name: str, layers: int = DEFAULT_LAYERS) -> Arch:
    """The built-in architecture ``name`` (``"darts"`` = DARTS-V2, ``"pdarts"`` = P-DARTS) as ``layers`` cells.

    With the default 20 cells this is exactly the reference's ``genotypes.DARTS`` / ``genotypes.PARTS``
    (reduction genotype in cells 6 and 13). Other depths are our extension: the reduction genotype goes to
    cells ``layers // 3`` and ``2 * layers // 3``, where the networks put their reduction cells. Every call
    returns a fresh list, so callers may modify it.
    """
    if name not in _GENOTYPES:
        raise ConfigError(f"unknown built-in architecture {name!r} (known: {', '.join(BUILTIN_NAMES)}); "
                          "pass one of those, or a search folder with --path to pick a searched architecture")
    if isinstance(layers, bool) or not isinstance(layers, int) or layers < 1:
        raise ConfigError(f"a built-in architecture needs a positive number of layers, got {layers!r}; "
                          "pass --layers 1 or more")
    normal, reduction = _GENOTYPES[name]
    reductions = (layers // 3, 2 * layers // 3)
    return [list(reduction if i in reductions else normal) for i in range(layers)]
