"""The global sample order of a training run, and each worker's part of it.

The order is the concatenation of per-epoch permutations of the dataset, each drawn from
(seed, epoch): the same on every worker and for any number of workers. A step consumes the next
`batch_size` samples of it (the global batch), of which worker r of W takes r, r + W, r + 2W, ...
The workers' parts are disjoint, the steps of an epoch cover it once, and the position (epoch,
sample in the epoch) means the same whatever the number of workers, so a checkpoint holds it as
such and resumes on any number of workers. Taking every W-th sample (not a contiguous slice)
keeps the discriminator's strided minibatch-std groups the same as in one process with the whole
batch when the per-worker batch equals the group size.
"""

from __future__ import annotations

import torch

# Checkpoints whose epoch position is the global one (older ones held rank 0's position in its shard).
DATA_ORDER = "global-strided"


class SampleOrder:
    """Worker `rank` of `world_size`'s part of the global order, `per_worker` samples a step.

    `epoch` and `pos` are the global position of the next step's batch.
    """

    def __init__(self, num_samples: int, seed: int, rank: int, world_size: int, per_worker: int) -> None:
        self.num_samples, self.seed = num_samples, seed
        self.rank, self.world_size, self.per_worker = rank, world_size, per_worker
        self.epoch, self.pos = 0, 0
        self._perms: dict[int, torch.Tensor] = {}  # the per-epoch permutations in use

    def permutation(self, epoch: int) -> torch.Tensor:
        """The sample order of `epoch` [num_samples]: a permutation from (seed, epoch)."""
        perm = self._perms.get(epoch)
        if perm is None:
            gen = torch.Generator().manual_seed(self.seed * 7919 + epoch)
            perm = torch.randperm(self.num_samples, generator=gen)
            if len(self._perms) >= 3:  # a batch spans at most the current epoch and the next
                del self._perms[min(self._perms)]
            self._perms[epoch] = perm
        return perm

    def indices_at(self, epoch: int, pos: int) -> tuple[torch.Tensor, int, int]:
        """This worker's part [per_worker] of the global batch that starts at sample `pos` of
        epoch `epoch`, and the global (epoch, position) after that batch."""
        n, W = self.num_samples, self.world_size
        offsets = [pos + self.rank + W * j for j in range(self.per_worker)]
        out = [int(self.permutation(epoch + k // n)[k % n]) for k in offsets]
        end = pos + self.per_worker * W
        return torch.tensor(out, dtype=torch.long), epoch + end // n, end % n

    def next(self) -> torch.Tensor:
        """This worker's part of the next global batch; advances the position."""
        indices, self.epoch, self.pos = self.indices_at(self.epoch, self.pos)
        return indices

    def peek(self) -> torch.Tensor:
        """This worker's part of the batch after the current position, without advancing."""
        return self.indices_at(self.epoch, self.pos)[0]


__all__ = ["DATA_ORDER", "SampleOrder"]
