"""Each kernel module's public API is its ``__all__`` (listed in ``kernels/__init__.py``), and the product code, the
kernel modules included, imports nothing else from them: every name taken from a kernel module, by a ``from``
import or as an attribute of the imported module, is in that module's ``__all__``."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
MODULES = ("batchnorm", "common", "dwpw", "mixed_activation", "sampled_dwpw", "sampled_pool", "sampled_reduce",
           "slot_sum")
PRODUCT = sorted([*ROOT.glob("kernels/*.py"), *ROOT.glob("sswp_fast/**/*.py")])


def _kernel_module(node: ast.ImportFrom, path: Path) -> str | None:
    """The kernel module a ``from`` import names (``sswp_fast.kernels.x`` or, inside ``kernels/``, ``.x``)."""
    if node.module and node.module.startswith("sswp_fast.kernels."):
        return node.module.removeprefix("sswp_fast.kernels.")
    if node.level == 1 and path.parent.name == "kernels" and node.module:
        return node.module
    return None


def _uses(path: Path) -> list[tuple[str, str]]:
    """(kernel module, name) for every name ``path`` takes from a kernel module."""
    tree = ast.parse(path.read_text())
    uses, aliases = [], {}
    for node in ast.walk(tree):
        if not isinstance(node, ast.ImportFrom):
            continue
        module = _kernel_module(node, path)
        package = node.module == "sswp_fast.kernels" or (node.level == 1 and path.parent.name == "kernels"
                                                          and node.module is None)
        for alias in node.names:
            if module is not None:
                uses.append((module, alias.name))
            elif package:
                aliases[alias.asname or alias.name] = alias.name
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in aliases:
            uses.append((aliases[node.value.id], node.attr))
    return uses


def test_every_module_lists_its_public_api_in_the_package_docstring():
    listed = importlib.import_module("sswp_fast.kernels").__doc__
    for name in MODULES:
        module = importlib.import_module(f"sswp_fast.kernels.{name}")
        assert module.__all__ and all(not n.startswith("_") and hasattr(module, n) for n in module.__all__), name
        assert f":mod:`.{name}`" in listed, name
        missing = [n for n in module.__all__ if f"``{n}``" not in listed]
        assert not missing, f"{name}: {missing} not in kernels/__init__.py"


def test_product_code_takes_only_public_names_from_kernel_modules():
    wrong = []
    for path in PRODUCT:
        for module, name in _uses(path):
            public = importlib.import_module(f"sswp_fast.kernels.{module}").__all__ if module in MODULES else ()
            if name not in public:
                wrong.append(f"{path.relative_to(ROOT)}: {module}.{name}")
    assert not wrong, "names taken from kernel modules that are not in their __all__: " + ", ".join(wrong)
