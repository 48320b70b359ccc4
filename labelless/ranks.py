"""This process's place in a `torchrun` job, read from its environment. Torch-free, so that light entry
points (the time-to-accuracy parent, which must not import torch before its seeds' clocks start) ask the
same question the Trainer does."""
import os
from dataclasses import dataclass


@dataclass(frozen=True)
class DistributedInfo:
    rank: int
    world_size: int
    local_rank: int

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def distributed_info() -> DistributedInfo:
    """This process's place in a `torchrun` job, from its environment (a lone process: rank 0 of 1)."""
    env = os.environ
    return DistributedInfo(int(env.get("RANK", 0)), int(env.get("WORLD_SIZE", 1)), int(env.get("LOCAL_RANK", 0)))
