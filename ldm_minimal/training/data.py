"""The data of a run: the batch of a step is a pure function of (seed, step, rank), so a resumed run sees the
same data as an uninterrupted one, and each DDP rank reads its own slice of every global batch."""

from __future__ import annotations

from typing import Any, Iterator

import torch
from torch import Tensor

from ldm_minimal.data import SHAPES_SPLITS, ShapesDataset, collate, shapes_preset, world_dataset
from ldm_minimal.data.shapes import SHAPES_PRESETS
from ldm_minimal.training.config import TrainConfig


class StepBatches(torch.utils.data.Sampler):
    """Yields, for steps start..stop-1, the dataset indices of this rank's share of each global batch.

    Global sample position p = step * global_batch + rank * local_batch + j. Rendered worlds (shapes) are
    infinite, so index = p; finite datasets take p modulo their length through a fresh permutation per epoch,
    drawn from a generator seeded with (seed, epoch).
    """

    def __init__(self, start: int, stop: int, global_batch: int, rank: int, world_size: int,
                 dataset_len: int | None, seed: int) -> None:
        self.start, self.stop = start, stop
        self.local = global_batch // world_size
        self.global_batch, self.rank = global_batch, rank
        self.n, self.seed = dataset_len, seed
        self._perm: tuple[int, Tensor] | None = None

    def _index(self, p: int) -> int:
        if self.n is None:
            return p
        epoch, i = divmod(p, self.n)
        if self._perm is None or self._perm[0] != epoch:
            g = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
            self._perm = (epoch, torch.randperm(self.n, generator=g))
        return int(self._perm[1][i])

    def __iter__(self) -> Iterator[list[int]]:
        for step in range(self.start, self.stop):
            first = step * self.global_batch + self.rank * self.local
            yield [self._index(first + j) for j in range(self.local)]

    def __len__(self) -> int:
        return self.stop - self.start


def resolve_world(cfg: TrainConfig, default_world: str = "shapes32") -> tuple[str, int]:
    """(world, resolution) of a run: a shapes preset carries its resolution; other worlds take cfg.resolution."""
    world = cfg.world or default_world
    if world == "shapes":
        world = f"shapes{cfg.resolution or 32}"
    if world in SHAPES_PRESETS:
        res = shapes_preset(world).resolution
        if cfg.resolution is not None and cfg.resolution != res:
            raise ValueError(f"world {world!r} is {res}x{res}; drop --resolution or pick the shapes world of that size.")
        return world, res
    return world, int(cfg.resolution or 32)


def make_dataset(world: str, resolution: int, split: str, seed: int = 0) -> tuple[torch.utils.data.Dataset, int | None]:
    """The torch dataset of a world and its length (None for the infinite rendered shapes world)."""
    if world in SHAPES_PRESETS:
        # the test pictures come from another seed (SHAPES_SPLITS: the seed offset of each split)
        return ShapesDataset(shapes_preset(world, seed=seed + SHAPES_SPLITS[split]), length=2**62), None
    ds = world_dataset(world, split=split, resolution=resolution)
    return ds, len(ds)


def fixed_batch(world: str, resolution: int, n: int, seed: int = 0) -> dict[str, Any]:
    """n held-out samples (the test split) for sample grids and evaluation."""
    ds, length = make_dataset(world, resolution, "test", seed)
    idx = list(range(n if length is None else min(n, length)))
    return collate([ds[i] for i in idx])


def step_loader(cfg: TrainConfig, world: str, resolution: int, start: int, stop: int, rank: int, world_size: int,
                device: torch.device) -> Iterator[dict[str, Any]]:
    """This rank's batches of steps start..stop-1 of a run (see StepBatches)."""
    ds, length = make_dataset(world, resolution, "train", cfg.seed)
    sampler = StepBatches(start, stop, cfg.batch_size, rank, world_size, length, cfg.seed)
    loader = torch.utils.data.DataLoader(ds, batch_sampler=sampler, collate_fn=collate, num_workers=cfg.num_workers,
                                         persistent_workers=False, pin_memory=device.type == "cuda",
                                         # its own generator: creating a loader must not draw from the global
                                         # RNG, or a resumed run's random stream would shift
                                         generator=torch.Generator().manual_seed(cfg.seed + start))
    return iter(loader)


def first_global_batch(cfg: TrainConfig, world: str, resolution: int) -> dict[str, Any]:
    """The whole global batch of step 0 (every rank's share), read in this process."""
    ds, length = make_dataset(world, resolution, "train", cfg.seed)
    sampler = StepBatches(0, 1, cfg.batch_size, 0, 1, length, cfg.seed)
    return collate([ds[i] for i in next(iter(sampler))])
