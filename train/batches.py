"""The data as mlx-lm's `train()` consumes it: pre-tokenized items and an `iterate_batches` that resumes exactly.

mlx-lm shuffles with numpy's global RNG, which its validation passes also consume; here batch i of a run is a
pure function of (seed, i), so a resumed run sees exactly the batches the uninterrupted one would have.
"""

from __future__ import annotations

import mlx.core as mx
import numpy as np

from train.loss import supervised_positions

EVAL_ORDER_SEED = 0x5EED_0E7A  # the validation subset is fixed for a run, independent of training


class TokenizedDataset:
    """(tokens, offset) pairs, the item format of mlx-lm's batching and loss; a session sample's item is
    (tokens, spans), the [start, end) token ranges of its assistant turns, since one offset cannot say it."""

    def __init__(self, items):
        self.items = [(t.tokens, t.offset if t.spans is None else t.spans) for t in items]

    def __getitem__(self, idx: int):
        return self.items[idx]

    def __len__(self):
        return len(self.items)

    def itemlen(self, idx: int) -> int:
        return len(self.items[idx][0])


def make_iterate_batches(seed: int, start_iteration: int = 0):
    """An `iterate_batches` for mlx-lm's `train()`/`evaluate()` (same signature and batch format).

    Batches are contiguous runs of the length-sorted samples (little padding). Training (`loop=True`) visits
    them in epoch e in the order `default_rng([seed, e]).permutation(...)`, starting at global batch
    `start_iteration`. Evaluation (`loop=False`) uses one fixed order, so every validation pass sees the same
    subset. Sequences longer than max_seq_length are cut (preflight reported how many)."""

    def iterate_batches(dataset, batch_size, max_seq_length, loop=False, comm_group=None, **_):
        batches = epoch_batches(dataset, batch_size, comm_group)
        if not loop:
            for i in np.random.default_rng([seed, EVAL_ORDER_SEED]).permutation(len(batches)):
                yield collate(dataset, batches[i], max_seq_length)
            return
        position = start_iteration
        while True:
            epoch, index = divmod(position, len(batches))
            permutation = np.random.default_rng([seed, epoch]).permutation(len(batches))
            for i in permutation[index:]:
                yield collate(dataset, batches[i], max_seq_length)
            position = (epoch + 1) * len(batches)

    return iterate_batches


def epoch_batches(dataset, batch_size: int, comm_group=None) -> list[list[int]]:
    """The batches of one epoch, as dataset indices (this rank's share of each), before shuffling: contiguous
    runs of the length-sorted samples; the last `len % batch_size` (the longest) are left out, as in mlx-lm.
    Equal lengths are ordered by their tokens, so the batches depend on the samples, not on the file's order."""
    order = sorted(range(len(dataset)), key=lambda i: (dataset.itemlen(i), dataset[i][0]))
    if len(dataset) < batch_size:
        raise ValueError(
            f"Dataset must have at least batch_size={batch_size} examples but only has {len(dataset)}."
        )
    offset, step = (comm_group.rank(), comm_group.size()) if comm_group is not None else (0, 1)
    if batch_size % step != 0:
        raise ValueError("The batch size must be divisible by the number of workers")
    return [
        order[i + offset : i + offset + batch_size : step]
        for i in range(0, len(order) - batch_size + 1, batch_size)
    ]


def collate(dataset, indices: list[int], max_seq_length: int):
    """mlx-lm's padding: to 1 + a multiple of 32, capped at max_seq_length; returns (batch, [offset, length]) plus
    the supervised positions and their weights (`train.loss`). A session row's offset is its first span's start."""
    items = [dataset[j] for j in indices]
    lengths = [min(len(tokens), max_seq_length) for tokens, _ in items]
    pad_to = 32
    width = min(1 + pad_to * ((max(lengths) + pad_to - 1) // pad_to), max_seq_length)
    batch = np.zeros((len(items), width), np.int32)
    for row, ((tokens, _), length) in enumerate(zip(items, lengths, strict=True)):
        batch[row, :length] = tokens[:length]
    spans = [supervision if isinstance(supervision, tuple) else None for _, supervision in items]
    offsets = np.array(
        [
            [supervision[0][0] if row_spans else supervision, length]
            for (_, supervision), row_spans, length in zip(items, spans, lengths, strict=True)
        ],
        np.int32,
    )
    positions, weights = supervised_positions(offsets, width, spans)
    return mx.array(batch), mx.array(offsets), mx.array(positions), mx.array(weights)
