"""The experiment folder of a run (``exps/{exp_group}/{stage}-{note}``): created once, continued only with
``--resume``, replaced only with ``--force``, never silently overwritten. Every command that writes a run
(search, train, finetune, linear-eval, pretrain) prepares its folder here, and in a multi-process run every
rank checks it before rank 0 creates it, so all ranks stop with the same error."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path
from typing import ClassVar

from sswp_fast.errors import CheckpointError, ConfigError
from sswp_fast.runtime import distributed
from sswp_fast.runtime.flags import Combination, check_choices, check_combinations

RESUME_FILE = "resume.pth.tar"


def run_dir_for(root: Path | str, exp_group: str, stage: str, note: str) -> Path:
    """``{root}/exps/{exp_group}/{stage}-{note}`` (the reference's place)."""
    return Path(root) / "exps" / exp_group / f"{stage}-{note}"


def prepare_run_dir(run_dir: Path, resume: bool, force: bool, create: bool = True,
                    resume_file: str = RESUME_FILE) -> Path:
    """Create ``run_dir``; an existing one is continued (``resume``, from ``resume_file``) or wiped (``force``),
    never silently overwritten. ``create=False`` only checks."""
    exists = run_dir.exists() and any(run_dir.iterdir())
    if resume:
        if not (run_dir / resume_file).exists():
            raise CheckpointError(f"--resume: no {resume_file} in {run_dir}; start the run without --resume")
    elif exists:
        if not force:
            raise ConfigError(f"experiment folder {run_dir} already exists; pass --resume to continue it, "
                              "--force to overwrite it, or choose another --note")
        if create:
            shutil.rmtree(run_dir)
    if create:
        run_dir.mkdir(parents=True, exist_ok=True)
    return run_dir


def differing_fields(current: dict, saved: dict, neutral: frozenset[str]) -> list[str]:
    """Sorted names of the fields of ``current`` (a config's ``to_dict()``) that ``saved`` holds with another value,
    leaving out the ``neutral`` ones (those a resumed run may change)."""
    return sorted(k for k in current if k not in neutral and saved.get(k, current[k]) != current[k])


RESUME_OR_FORCE = Combination("`--resume` with `--force`", "error: pick one", lambda c: c.resume and c.force,
                              "--resume and --force exclude each other; pick one")
"""``--resume`` and ``--force``, which every command that writes a run folder takes, exclude each other."""


class RunOptions:
    """Mixin of the dataclass configurations of the commands: ``to_dict`` for checkpoints, ``differences`` from a
    saved configuration over every field but the ``NEUTRAL`` ones (those a resumed run may change), and
    ``check_flags`` over the flag fields (:mod:`sswp_fast.runtime.flags`) and the ``COMBINATIONS`` table."""

    NEUTRAL: ClassVar[frozenset[str]] = frozenset()
    COMBINATIONS: ClassVar[tuple[Combination, ...]] = (RESUME_OR_FORCE,)
    """The flag combinations this command refuses (and, for the search, those its planning decides)."""

    def check_flags(self) -> None:
        """A one-line :class:`ConfigError` for a flag value outside its choices or a refused combination."""
        check_choices(self)
        check_combinations(self, self.COMBINATIONS)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def differences(self, other: dict) -> list[str]:
        """Names of the result-relevant fields whose value differs from ``other`` (a saved :meth:`to_dict`)."""
        return differing_fields(self.to_dict(), other, self.NEUTRAL)


def refuse_changed_config(differences: list[str], saved: dict, current: dict) -> None:
    """One-line error when ``--resume`` comes with other values of the result-relevant ``differences``."""
    if differences:
        detail = ", ".join(f"--{k} {saved.get(k)!r} → {current[k]!r}" for k in differences)
        raise ConfigError(f"--resume with a different configuration ({detail}); "
                          "rerun with the original flags or start a new --note")


def prepare_run_dir_on_all_ranks(run_dir: Path, resume: bool, force: bool, world: distributed.World,
                                 resume_file: str = RESUME_FILE) -> Path:
    """:func:`prepare_run_dir` in a run of ``world``: every rank checks, then rank 0 alone creates."""
    if not world.distributed:
        return prepare_run_dir(run_dir, resume, force, resume_file=resume_file)
    prepare_run_dir(run_dir, resume, force, create=False, resume_file=resume_file)
    distributed.barrier(world)
    if world.main:
        prepare_run_dir(run_dir, resume, force, resume_file=resume_file)
    distributed.barrier(world)
    return run_dir
