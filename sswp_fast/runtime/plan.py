"""A command's plan (``--dry_run``): what it would do, as named items, shown as text or one JSON object.

Every driver (the search, the downstream stages, NASiam) checks its inputs and resolves its choices into a
:class:`Plan` before it writes anything; a real run starts from the same plan.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from sswp_fast.runtime import distributed


@dataclass
class Plan:
    """What a command would do: a title and named items, shown as one block of text or one JSON object."""

    command: str
    items: dict[str, Any] = field(default_factory=dict)
    notes: dict[str, str] = field(default_factory=dict)
    """A human sentence for an item, shown instead of its value in the text form."""

    def text(self) -> str:
        width = max(len(k) for k in self.items)
        lines = [f"{self.command}: plan (--dry_run: nothing was run, written or allocated)"]
        for key, value in self.items.items():
            first, *more = str(self.notes.get(key, value)).split("\n")
            lines.append(f"  {key:<{width}}  {first}")
            lines.extend(f"  {'':<{width}}  {line}" for line in more)
        return "\n".join(lines)

    def json(self) -> str:
        return json.dumps({"command": self.command, **self.items}, default=str)


def show(plan: Plan, form: str) -> str:
    """``plan`` as ``--dry_run form`` asks: ``text`` or ``json``."""
    return plan.json() if form == "json" else plan.text()


def process_count(world: distributed.World) -> str:
    return f"{world.size} (torchrun)" if world.distributed else "1"
