"""Runs one compact-network stage as the ``sswp-fast`` command would (float64 default dtype), then saves this
rank's final weights to ``rank{RANK}.pth.tar`` in the working folder, so that a test can compare the weights of
every rank of a ``torchrun`` run, which only rank 0 would write otherwise."""

import sys

import torch

from sswp_fast.cli import build_parser, stage_config_from_args
from sswp_fast.runtime.checkpoint import atomic_save
from sswp_fast.runtime.distributed import shutdown, world_from_env
from sswp_fast.stages.run import StageRun, select_architectures

if __name__ == "__main__":
    torch.set_default_dtype(torch.float64)
    config = stage_config_from_args(build_parser().parse_args(sys.argv[1:]))
    world = world_from_env()
    (name, arch), = select_architectures(config.path, config.arch_name).items()
    run = StageRun(config, name, arch, ".", world)
    run.run()
    atomic_save(run.model.state_dict(), f"rank{world.rank}.pth.tar")
    shutdown(world)
