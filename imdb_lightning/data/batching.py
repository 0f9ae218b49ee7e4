"""From cached token ids to batches: the dataset, padding, length buckets and a loader that resumes mid-epoch."""

from __future__ import annotations

from collections.abc import Callable
from functools import cached_property

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler

from .tokenizer import PAD_ID, UNK_ID


class TokenizedReviews(Dataset):
    """Ragged token ids (flat array + offsets), truncated on access so the cache serves any max_length.

    `groups` numbers each review's film within the split (reviews of unknown films get their own
    number), which the classifier uses for the film-clustered error of validation accuracy.
    """

    def __init__(self, ids: np.ndarray, offsets: np.ndarray, labels: np.ndarray, groups: np.ndarray,
                 max_length: int, truncation: str):
        self.ids, self.offsets, self.labels, self.groups = ids, offsets, labels, groups
        self.max_length, self.keep_tail = max_length, truncation == "tail"

    def __len__(self) -> int:
        return len(self.labels)

    @cached_property
    def lengths(self) -> np.ndarray:
        return np.clip(np.diff(self.offsets), 1, self.max_length)

    def __getitem__(self, i: int) -> tuple[np.ndarray, int, int, int]:
        ids = self.ids[self.offsets[i] : self.offsets[i + 1]]
        if len(ids) > self.max_length:
            ids = ids[-self.max_length :] if self.keep_tail else ids[: self.max_length]
        if len(ids) == 0:  # an empty review reads as one unknown word, so every length is >= 1
            ids = np.array([UNK_ID], dtype=np.int32)
        return ids, int(self.labels[i]), int(self.groups[i]), i


def collate(samples: list[tuple[np.ndarray, int, int, int]]) -> dict[str, torch.Tensor]:
    lengths = np.array([len(sample[0]) for sample in samples], dtype=np.int64)
    input_ids = np.full((len(samples), lengths.max()), PAD_ID, dtype=np.int64)  # (batch, time)
    for row, sample in enumerate(samples):
        input_ids[row, : len(sample[0])] = sample[0]
    return {
        "input_ids": torch.from_numpy(input_ids),
        "lengths": torch.from_numpy(lengths),
        "labels": torch.tensor([sample[1] for sample in samples], dtype=torch.long),
        "groups": torch.tensor([sample[2] for sample in samples], dtype=torch.long),
        # the review's place in its split: validation outcomes are saved per review (runs.write_val_reviews)
        "index": torch.tensor([sample[3] for sample in samples], dtype=torch.long),
    }


class BucketBatchSampler(Sampler[list[int]]):
    """Batches of similar-length reviews, so padding stays short.

    `sampler` picks this process's share of the data in a seeded order (a DistributedSampler,
    also with one process: Lightning calls its `set_epoch`). Within pools of `pool` batches the
    reviews are sorted by length and cut into batches; the batches are then shuffled. Without
    shuffling, all reviews are sorted by length (fastest for evaluation). `pool=0` keeps the
    sampler's order as it is (no bucketing).

    `resume_at(epoch, done)` makes the next pass over `epoch` skip the `done` batches an
    interrupted run already trained on, so a resumed epoch sees exactly the batches it had left.
    """

    def __init__(self, sampler: DistributedSampler, lengths: np.ndarray, batch_size: int, pool: int = 50):
        self.sampler, self.lengths, self.batch_size, self.pool = sampler, lengths, batch_size, pool
        self._skip: tuple[int, int] | None = None

    def __len__(self) -> int:
        return -(-len(self.sampler) // self.batch_size)

    def batches(self) -> list[list[int]]:
        order = np.fromiter(self.sampler, dtype=np.int64)
        if self.pool == 0:
            return [order[i : i + self.batch_size].tolist() for i in range(0, len(order), self.batch_size)]
        shuffle = self.sampler.shuffle
        size = self.batch_size * self.pool if shuffle else len(order)
        chunks = [order[i : i + size] for i in range(0, len(order), size)]
        order = np.concatenate([c[np.argsort(self.lengths[c], kind="stable")] for c in chunks])
        batches = [order[i : i + self.batch_size].tolist() for i in range(0, len(order), self.batch_size)]
        if shuffle:
            rng = np.random.default_rng([self.sampler.seed, self.sampler.epoch])
            batches = [batches[i] for i in rng.permutation(len(batches))]
        return batches

    def resume_at(self, epoch: int, done: int) -> None:
        self._skip = (epoch, done)

    def __iter__(self):
        batches = self.batches()
        if self._skip is not None:
            epoch, done = self._skip
            self._skip = None
            if epoch == self.sampler.epoch:
                batches = batches[done:]
        return iter(batches)


class ResumableLoader(DataLoader):
    """A DataLoader over a BucketBatchSampler whose position survives a checkpoint.

    Lightning saves `state_dict()` in every checkpoint and hands it back on resume; `progress()`
    answers (epoch, batches trained in it) from the trainer, the only one who knows how many of
    the batches this loader has yielded were trained on (Lightning fetches one ahead).
    `sampler` is the batch sampler's DistributedSampler, so Lightning, seeing the data already
    sharded per process, never replaces it.
    """

    def __init__(self, dataset: Dataset, batch_sampler: BucketBatchSampler, progress: Callable[[], tuple[int, int]], **kwargs):
        super().__init__(dataset, batch_sampler=batch_sampler, **kwargs)
        self.progress = progress

    @property
    def sampler(self):
        return self.batch_sampler.sampler

    @sampler.setter
    def sampler(self, value) -> None:  # DataLoader.__init__ sets a SequentialSampler placeholder
        pass

    def state_dict(self) -> dict:
        epoch, done = self.progress()
        return {"epoch": epoch, "batches_done": done}

    def load_state_dict(self, state: dict) -> None:
        # Lightning makes the resumed epoch's iterator before it sets the sampler's epoch: set it here,
        # or the resumed epoch would replay the first epoch's order.
        self.sampler.set_epoch(state["epoch"])
        self.batch_sampler.resume_at(state["epoch"], state["batches_done"])
