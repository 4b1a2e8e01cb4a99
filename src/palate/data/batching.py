"""Batches: pad to the batch's longest sequence, bucket by length, optionally pack.

Padding is waste: every pad token costs a full forward and backward. :func:`plan_batches` groups
sequences of similar length (shuffled within large buckets, then batch order shuffled) so batches are
mostly real tokens; :func:`pack` goes further and concatenates short sequences into full rows with
position ids restarting per sequence (attention stays within each sequence).

The plan is a pure function of ``(lengths, batch_size, seed, epoch)``, which is what lets a resumed run
continue on exactly the batches an uninterrupted one would have seen.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import torch

from palate.data.tokenize import Example

IGNORE = -100


@dataclass
class Batch:
    input_ids: torch.Tensor
    """[B, T]"""
    attention_mask: torch.Tensor | None
    """[B, T]; None for packed rows (position_ids separate sequences)"""
    labels: torch.Tensor
    """[B, T], IGNORE on prompt and padding positions"""
    position_ids: torch.Tensor | None
    """[B, T] for packed rows"""
    indices: list[int]
    """record indices of the examples inside"""
    n_tokens: int
    """real (non-padding) tokens"""
    group_sizes: list[int] | None = None
    """comparison batches: rows come in groups sharing a prompt"""
    row_sizes: list[int] | None = None
    """packed rows: how many examples (entries of ``indices``) each row holds"""
    row_tokens: list[int] | None = None
    """packed rows: real tokens per row"""

    @property
    def n_targets(self) -> int:
        """Tokens the loss is computed on (labels shift by one, so a row's first label never counts)."""
        return int((self.labels[:, 1:] != IGNORE).sum())

    @property
    def n_slots(self) -> int:
        return self.input_ids.numel()

    def causal_inputs(self) -> dict[str, torch.Tensor]:
        """Inputs for a causal forward whose outputs are read only at real positions.

        Rows are right-padded, so under causal attention no real token ever sees a pad token: the
        attention mask changes nothing at real positions (tested bit-identical) and is left out. Without
        a mask, SDPA takes its fused causal kernel instead of materialising masked attention weights.
        """
        inputs = {"input_ids": self.input_ids}
        if self.position_ids is not None:
            inputs["position_ids"] = self.position_ids
        return inputs

    def model_inputs(self) -> dict[str, torch.Tensor]:
        inputs = {"input_ids": self.input_ids}
        if self.attention_mask is not None:
            inputs["attention_mask"] = self.attention_mask
        if self.position_ids is not None:
            inputs["position_ids"] = self.position_ids
        return inputs


def collate(examples: list[Example], pad_id: int) -> Batch:
    """Right-pad to the longest example; prompt and pad positions get ``IGNORE`` labels."""
    width = max(len(e) for e in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE, dtype=torch.long)
    for row, ex in enumerate(examples):
        seq = torch.tensor(ex.input_ids, dtype=torch.long)
        ids[row, : len(ex)] = seq
        mask[row, : len(ex)] = 1
        labels[row, ex.completion_start : len(ex)] = seq[ex.completion_start :]
    return Batch(ids, mask, labels, None, [e.index for e in examples], sum(len(e) for e in examples))


def collate_packed(rows: list[list[Example]], pad_id: int, width: int) -> Batch:
    """Each row is several examples laid end to end; position ids restart at 0 for each one.

    With ``attention_mask=None`` transformers derives a block-diagonal causal mask from the position
    ids, so no example attends to another. Tail padding forms its own ignored segment.
    """
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE, dtype=torch.long)
    pos = torch.zeros((len(rows), width), dtype=torch.long)
    indices, n_tokens = [], 0
    for r, row in enumerate(rows):
        at = 0
        for ex in row:
            n = len(ex)
            seq = torch.tensor(ex.input_ids, dtype=torch.long)
            ids[r, at : at + n] = seq
            labels[r, at + ex.completion_start : at + n] = seq[ex.completion_start :]
            pos[r, at : at + n] = torch.arange(n)
            at += n
            indices.append(ex.index)
            n_tokens += n
        pos[r, at:] = torch.arange(width - at)
    return Batch(ids, None, labels, pos, indices, n_tokens,
                 row_sizes=[len(row) for row in rows], row_tokens=[sum(map(len, row)) for row in rows])


def plan_batches(
    lengths: list[int], batch_size: int, seed: int, epoch: int, bucket: bool = True, bucket_batches: int = 32
) -> list[list[int]]:
    """Indices for each batch of one epoch, deterministic in ``(seed, epoch)``.

    With ``bucket``: shuffle, cut into chunks of ``bucket_batches * batch_size``, sort each chunk by
    length, split into batches, then shuffle the batch order. Without: plain shuffled batches.
    The last batch may be smaller; nothing is dropped.
    """
    rng = random.Random(f"{seed}:{epoch}")
    order = list(range(len(lengths)))
    rng.shuffle(order)
    if bucket:
        chunk = batch_size * bucket_batches
        order = [i for s in range(0, len(order), chunk) for i in sorted(order[s : s + chunk], key=lambda i: lengths[i])]
    batches = [order[s : s + batch_size] for s in range(0, len(order), batch_size)]
    if bucket:
        rng.shuffle(batches)
    return batches


def pack(examples: list[Example], width: int) -> list[list[Example]]:
    """First-fit-decreasing packing of examples into rows of at most ``width`` tokens."""
    rows: list[list[Example]] = []
    room: list[int] = []
    for ex in sorted(examples, key=len, reverse=True):
        for r, free in enumerate(room):
            if len(ex) <= free:
                rows[r].append(ex)
                room[r] -= len(ex)
                break
        else:
            rows.append([ex])
            room.append(width - len(ex))
    return rows


def epoch_batches(
    examples: list[Example],
    batch_size: int,
    pad_id: int,
    seed: int,
    epoch: int,
    *,
    bucket: bool = True,
    packing: bool = False,
    max_length: int = 0,
) -> list[Batch]:
    """All batches of one epoch, deterministic in ``(seed, epoch)``.

    With ``packing``, ``batch_size`` rows of ``max_length`` tokens are filled per batch (the packing
    is fixed; the row order is shuffled each epoch). Otherwise ``batch_size`` examples per batch.
    """
    if packing:
        rows = pack(examples, max_length)
        order = plan_batches([0] * len(rows), batch_size, seed, epoch, bucket=False)
        return [collate_packed([rows[i] for i in b], pad_id, max(sum(map(len, rows[i])) for i in b)) for b in order]
    order = plan_batches([len(e) for e in examples], batch_size, seed, epoch, bucket=bucket)
    return [collate([examples[i] for i in b], pad_id) for b in order]


def group_batches(
    groups: list[list[Example]], batch_size: int, pad_id: int, seed: int, epoch: int, *, bucket: bool = True
) -> list[Batch]:
    """Batches of ``batch_size`` comparison groups (a pair, or a ranking's responses best first), all
    rows of a batch in one padded tensor so one forward scores them all.

    Rows are group-major: group 0's responses, then group 1's, ... (``Batch.group_sizes`` says how many
    each). For pairs this puts chosen at rows ``0::2`` and rejected at ``1::2``. Bucketing uses each
    group's longest response.
    """
    order = plan_batches([max(map(len, g)) for g in groups], batch_size, seed, epoch, bucket=bucket)
    out = []
    for b in order:
        batch = collate([ex for i in b for ex in groups[i]], pad_id)
        batch.group_sizes = [len(groups[i]) for i in b]
        batch.indices = [groups[i][0].index for i in b]
        out.append(batch)
    return out


def shard(batch: Batch, rank: int, world: int) -> Batch | None:
    """Process ``rank``'s slice of a global batch for data-parallel training (``world`` processes).

    The batch's units (rows; whole comparison groups for group batches, so a pair never straddles two
    processes) are split into ``world`` contiguous slices whose sizes differ by at most one; the slices
    are disjoint and cover the batch, so the processes together see exactly the one-process batch.
    Right-padding beyond the slice's longest row is trimmed (it never changes a real position's
    output). Returns None when the batch has fewer units than processes and this one gets none.
    """
    if world == 1:
        return batch
    groups = batch.group_sizes or [1] * batch.input_ids.shape[0]
    base, extra = divmod(len(groups), world)
    g0 = rank * base + min(rank, extra)
    g1 = g0 + base + (1 if rank < extra else 0)
    if g0 == g1:
        return None
    r0, r1 = sum(groups[:g0]), sum(groups[:g1])
    rows = slice(r0, r1)
    if batch.group_sizes is not None:  # one index per group
        indices, n_tokens = batch.indices[g0:g1], None
    elif batch.row_sizes is not None:  # packed: several indices per row
        first = sum(batch.row_sizes[:r0])
        indices = batch.indices[first : first + sum(batch.row_sizes[rows])]
        n_tokens = sum(batch.row_tokens[rows])
    else:
        indices, n_tokens = batch.indices[rows], None
    width = batch.input_ids.shape[1]
    mask = batch.attention_mask[rows] if batch.attention_mask is not None else None
    if mask is not None:
        width = int(mask.sum(dim=1).max())
        n_tokens = int(mask.sum())
    cut = lambda t: t[rows, :width] if t is not None else None  # noqa: E731
    return Batch(
        cut(batch.input_ids), cut(batch.attention_mask), cut(batch.labels), cut(batch.position_ids), indices,
        n_tokens, group_sizes=groups[g0:g1] if batch.group_sizes is not None else None,
        row_sizes=batch.row_sizes[rows] if batch.row_sizes is not None else None,
        row_tokens=batch.row_tokens[rows] if batch.row_tokens is not None else None,
    )


def padding_stats(batches: list[Batch]) -> dict[str, float]:
    slots = sum(b.n_slots for b in batches)
    real = sum(b.n_tokens for b in batches)
    return {"tokens": real, "slots": slots, "padding_fraction": 1 - real / slots if slots else 0.0}


def row_buckets(lengths: list[int], max_parts: int = 4, part_cost: int = 16) -> list[list[int]]:
    """Rows of one batch split into length buckets, so that short rows are not padded to long ones.

    The rows are sorted by length (ties by position) and cut into at most ``max_parts`` contiguous runs,
    chosen exactly (dynamic programming) to minimise the padded slots ``sum(rows * longest)`` plus
    ``part_cost`` slots per run (a run is one more forward pass: its fixed cost in token-equivalents).
    Returns the row positions of each run, shortest run first. Used for comparison batches, where a
    pair's chosen and rejected responses can differ a lot in length: rows are regrouped for the forward
    only, and the caller puts the scores back in the batch's order (so the pairing for the loss holds).
    """
    order = sorted(range(len(lengths)), key=lambda i: (lengths[i], i))
    n = len(order)
    if n == 0:
        return []
    parts = max(1, min(max_parts, n))
    inf = float("inf")
    # best[k][j]: least cost of the first j sorted rows in k runs; cut[k][j]: where the last run starts
    best = [[inf] * (n + 1) for _ in range(parts + 1)]
    cut = [[0] * (n + 1) for _ in range(parts + 1)]
    best[0][0] = 0.0
    for k in range(1, parts + 1):
        for j in range(1, n + 1):
            width = lengths[order[j - 1]]
            for i in range(k - 1, j):
                c = best[k - 1][i] + (j - i) * width + part_cost
                if c < best[k][j]:
                    best[k][j], cut[k][j] = c, i
    k = min(range(1, parts + 1), key=lambda k: (best[k][n], k))
    runs, j = [], n
    while k > 0:
        i = cut[k][j]
        runs.append(order[i:j])
        j, k = i, k - 1
    return runs[::-1]


def split_rows(batch: Batch, max_parts: int = 4, part_cost: int = 16) -> list[tuple[list[int], Batch]]:
    """A right-padded batch's rows as :func:`row_buckets` sub-batches, each trimmed to its own longest row:
    ``[(row positions in ``batch``, sub-batch), ...]``. The sub-batches carry no record indices or group
    sizes (those stay with ``batch``); their padding is what a forward over them computes."""
    if batch.attention_mask is None:
        raise ValueError("split_rows needs a padded batch with an attention mask (not packed rows)")
    lengths = batch.attention_mask.sum(dim=1).tolist()
    out = []
    for rows in row_buckets(lengths, max_parts, part_cost):
        width = max(lengths[r] for r in rows)
        idx = torch.tensor(rows, dtype=torch.long)
        ids, mask, labels, pos = (None if t is None else t[idx, :width]
                                  for t in (batch.input_ids, batch.attention_mask, batch.labels, batch.position_ids))
        out.append((rows, Batch(ids, mask, labels, pos, [], sum(lengths[r] for r in rows))))
    return out


def bucketed_padding_stats(batches: list[Batch], max_parts: int = 4, part_cost: int = 16) -> dict[str, float]:
    """:func:`padding_stats` of the forwards :func:`split_rows` would run for ``batches`` (computed from the
    row lengths alone, nothing collated)."""
    slots = real = 0
    for b in batches:
        lengths = b.attention_mask.sum(dim=1).tolist()
        for rows in row_buckets(lengths, max_parts, part_cost):
            slots += len(rows) * max(lengths[r] for r in rows)
            real += sum(lengths[r] for r in rows)
    return {"tokens": real, "slots": slots, "padding_fraction": 1 - real / slots if slots else 0.0}
