"""Streaming training data (``streaming: true``): rows are read, checked, tokenised and their images
decoded while training, inside the DataLoader (its workers when ``dataloader_num_workers`` > 0), so
memory does not grow with the dataset. Nothing reads the whole training set before step 1.

What it follows (docs/data.md, "Streaming"):

* **sources** are the training datasets' ``stream()`` (:class:`vlmplug.contracts.StreamingDatasetFormat`),
  read anew for every pass. One pass of a source is shared out among the *streams* reading it -- one per
  (process, DataLoader worker) -- in blocks of ``streams`` consecutive records, each block dealt out by a
  seeded permutation (:class:`Share`): every record goes to exactly one stream per pass, shares differ by
  at most one record, and which stream reads a record changes from pass to pass;
* each stream **shuffles** its share of a pass with a buffer of ``shuffle_buffer`` rows (0: file order),
  seeded by (seed, source, pass, stream): the same on every process and in every run with that seed;
* several sources **interleave**: each draw takes the next row of a source chosen with probability
  proportional to its weight (seeded, :class:`Mixer`); each source starts a new pass when it runs out, on
  its own, so the stream never ends and the Trainer stops at ``max_steps``;
* each row gets the same checks as :class:`~.data.EncodedDataset` gives it up front (images exist and
  their headers parse, placeholder counts, length), then is tokenised and its images decoded. A bad row
  follows ``on_bad_sample`` / ``on_overlength`` as up front: ``error`` stops the run naming it, a skip
  travels with the next good sample (``SKIPPED_KEY``) into the run's skip report, and a sample cut to
  ``max_seq_length`` travels the same way, flagged, into :attr:`StreamReport.truncated`;
* **several processes**: accelerate 1.x, with ``dispatch_batches`` off (the run sets it; on, the main
  process would read every batch and concatenate batches whose widths and image counts differ), wraps an
  IterableDataset in ``IterableDatasetShard``: every process iterates the whole dataset and keeps
  positions ``[rank * b, (rank + 1) * b)`` of each run of ``b * processes`` items. Here each process
  reads only its own share of the rows and puts its items at exactly those positions, with ``None``
  placeholders (nothing read) at the positions the shard drops (:meth:`StreamingDataset._placed`): no
  row is read twice, none is lost, and each process decodes only the images it trains on.
"""

from __future__ import annotations

import copy
import itertools
import random
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from vlmplug.errors import ConfigError, DataError, SkipReport

from .data import SKIPPED_KEY, SampleEncoder, _as_skip, check_image, load_media

__all__ = [
    "STREAM_HEAD",
    "TRUNCATED_FLAG",
    "BARREN_PASSES",
    "Share",
    "shuffled",
    "Mixer",
    "PassEnd",
    "StreamSources",
    "StreamingDataset",
    "StreamReport",
    "require_streams",
]

#: Rows read before training for what needs random access to training samples (a preset LLM's
#: tokenizer, evaluator baselines): the first good ones of each source's first pass.
STREAM_HEAD = 5000
#: Key of a record in ``SKIPPED_KEY`` that reports a sample cut to ``max_seq_length``, not a skip.
TRUNCATED_FLAG = "vlmplug_truncated"
#: Passes in a row without one good row after which a stream stops drawing from a source (one pass
#: could be bad luck: a stream's share of a pass may be a few rows); when no source is left, an error.
BARREN_PASSES = 8


class Share:
    """``keep(index)`` of one stream for one pass: records are dealt out in blocks of ``streams``
    consecutive ones, each block by a permutation seeded with ``key`` and the block number."""

    def __init__(self, key: str, stream: int, streams: int):
        self.key = key
        self.stream = stream
        self.streams = streams
        self._block = -1
        self._owners: list[int] = []

    def __call__(self, index: int) -> bool:
        block, position = divmod(index, self.streams)
        if block != self._block:
            owners = list(range(self.streams))
            random.Random(f"{self.key}:{block}").shuffle(owners)
            self._block, self._owners = block, owners
        return self._owners[position] == self.stream


def shuffled(rows: Iterator[Any], size: int, rng: random.Random) -> Iterator[Any]:
    """``rows`` through a shuffle buffer of ``size`` (0: as they come): each new row takes the place of
    a random one of the buffer, which is yielded; the rest of the buffer, shuffled, at the end."""
    if size <= 0:
        yield from rows
        return
    buffer: list[Any] = []
    for row in rows:
        if len(buffer) < size:
            buffer.append(row)
            continue
        j = rng.randrange(size)
        yield buffer[j]
        buffer[j] = row
    rng.shuffle(buffer)
    yield from buffer


@dataclass
class PassEnd:
    """Marks the end of a pass of one source in one stream: ``rows`` records were read in it."""

    rows: int


class Mixer:
    """Draws from several endless iterators, each with probability proportional to its weight;
    :meth:`drop` takes one out (e.g. a source that gave this stream no rows). A :class:`PassEnd` is
    passed on without costing its source the draw: the next row comes from the same source."""

    def __init__(self, streams: dict[int, Iterator[Any]], weights: Sequence[float], rng: random.Random):
        self.live = dict(streams)
        self.weights = list(weights)
        self.rng = rng

    def __iter__(self) -> Iterator[tuple[int, Any]]:
        again: int | None = None
        while self.live:
            keys = list(self.live)
            if again in self.live:
                k = again
            else:
                k = keys[0] if len(keys) == 1 else self.rng.choices(keys, [self.weights[i] for i in keys])[0]
            got = next(self.live[k])
            again = k if isinstance(got, PassEnd) else None
            yield k, got

    def drop(self, k: int) -> None:
        self.live.pop(k, None)


@dataclass
class StreamSources:
    """The training datasets of a streaming run, as built before the model exists (each with
    ``stream()``), their weights, labels and the stream's seed and shuffle buffer."""

    sets: list[Any]
    weights: list[float]
    names: list[str]
    seed: int = 42
    shuffle_buffer: int = 1000
    _head: list[dict[str, Any]] | None = field(default=None, repr=False)
    _head_complete: bool = field(default=False, repr=False)  # the first passes hold fewer good rows

    def passes(self, k: int, stream: int, streams: int) -> Iterator[tuple[int, Any] | PassEnd]:
        """Source ``k``'s rows for ``stream`` of ``streams``, pass after pass, forever: ``(record index,
        sample or DataError)``, shuffled within each pass, then a :class:`PassEnd`."""
        for p in itertools.count():
            share = None if streams == 1 else Share(f"{self.seed}:{k}:{p}", stream, streams)
            read = [0]
            rng = random.Random(f"{self.seed}:shuffle:{k}:{p}:{stream}")
            yield from shuffled(self._share(k, share, read), self.shuffle_buffer, rng)
            yield PassEnd(read[0])

    def _share(self, k: int, share: Share | None, read: list[int]) -> Iterator[tuple[int, Any]]:
        rows = self.sets[k].stream() if share is None else self.sets[k].stream(keep=share)
        for index, got in rows:
            if share is not None and not share(index):
                continue  # a format that ignored keep
            read[0] += 1
            yield index, got

    def mixer(self, stream: int = 0, streams: int = 1) -> Mixer:
        """The sources' passes for one stream, interleaved by weight."""
        its = {k: self.passes(k, stream, streams) for k in range(len(self.sets))}
        return Mixer(its, self.weights, random.Random(f"{self.seed}:mix:{stream}"))

    def samples(self, stream: int = 0, streams: int = 1) -> Iterator[tuple[int, int, Any]]:
        """``(source, record index, sample or DataError)`` of one stream, forever (a source whose pass
        gave this stream no record is dropped), before any encoding."""
        mixer = self.mixer(stream, streams)
        for k, got in mixer:
            if isinstance(got, PassEnd):
                if got.rows == 0:
                    mixer.drop(k)
                continue
            yield k, got[0], got[1]

    def head(self, n: int = STREAM_HEAD) -> list[dict[str, Any]]:
        """The first ``n`` good canonical samples of the sources' first passes, interleaved as one
        stream reads them (bad rows passed over: training meets them); read once, then kept."""
        if self._head is not None and (len(self._head) >= n or self._head_complete):
            return self._head[:n]
        out: list[dict[str, Any]] = []
        mixer = self.mixer()
        for k, got in mixer:
            if isinstance(got, PassEnd):
                mixer.drop(k)  # one pass each
                continue
            if isinstance(got[1], dict):
                out.append(got[1])
                if len(out) >= n:
                    break
        self._head, self._head_complete = out, len(out) < n
        return out


class StreamingDataset(torch.utils.data.IterableDataset):
    """Encoded training items from :class:`StreamSources`, read while iterating (see the module
    docstring): ``{"input_ids", "labels", "images", "frames", ["instruction_ids"], SKIPPED_KEY}`` like
    :class:`~.data.EncodedDataset` items. No length: the Trainer needs ``max_steps``."""

    def __init__(
        self,
        sources: StreamSources,
        encoder: SampleEncoder,
        *,
        skip_bad: bool,
        rank: int = 0,
        world_size: int = 1,
        batch_size: int = 1,
        split_batches: bool = False,
    ):
        self.sources = sources
        self.encoder = copy.copy(encoder)  # its own, caching nothing: memory must not grow with the data
        self.encoder._cache = {}
        self.encoder.cache_limit = 0
        self.skip_bad = skip_bad
        self.rank = rank
        self.world_size = world_size
        self.batch_size = batch_size
        self.split_batches = split_batches

    def streams(self) -> tuple[int, int]:
        """``(this stream, number of streams)``: one per (process, DataLoader worker)."""
        info = torch.utils.data.get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        return self.rank * workers + worker, self.world_size * workers

    def __iter__(self) -> Iterator[dict[str, Any] | None]:
        stream, streams = self.streams()
        items = self.items(stream, streams)
        return items if self.world_size == 1 else self._placed(items)

    def items(self, stream: int = 0, streams: int = 1) -> Iterator[dict[str, Any]]:
        """The encoded items of one stream, forever."""
        mixer = self.sources.mixer(stream, streams)
        good = dict.fromkeys(range(len(self.sources.sets)), 0)
        barren = dict.fromkeys(good, 0)  # passes in a row without a good row, per source
        pending: dict[tuple[str, str], dict[str, Any]] = {}  # skips waiting for a good item, each row once
        read = 0
        for k, got in mixer:
            if isinstance(got, PassEnd):
                read += got.rows
                barren[k] = barren[k] + 1 if good[k] == 0 else 0
                if got.rows == 0 or barren[k] >= BARREN_PASSES:  # this stream stops drawing from it
                    mixer.drop(k)
                good[k] = 0
                continue
            index, sample = got
            item = self._item(k, index, sample, pending)
            if item is None:
                continue
            good[k] += 1
            item[SKIPPED_KEY] = [*pending.values(), *item.get(SKIPPED_KEY, [])]
            pending = {}
            yield item
        self._ended(stream, streams, read, list(pending.values()))

    def _item(
        self, k: int, index: int, got: Any, pending: dict[tuple[str, str], dict[str, Any]]
    ) -> dict[str, Any] | None:
        """``got`` encoded, its images decoded; ``None`` (its skip added to ``pending``) for a bad row
        that is skipped; a bad row that is not skipped raises its DataError."""
        try:
            if isinstance(got, DataError):
                raise got
            return self._encode(got, str(got.get("_where") or f"{self.sources.names[k]} record {index}"))
        except DataError as e:
            if not self._skips(e):
                raise
            skip = _as_skip(e)
            pending.setdefault((str(skip["reason"]), str(skip["where"] or skip["message"])), skip)
            return None

    def _encode(self, sample: dict[str, Any], where: str) -> dict[str, Any]:
        for ref in sample.get("images") or []:
            check_image(ref, where)  # every image, also those a cut drops: as up front
        ids, labels, slots = self.encoder.encode(sample, where)
        cut = self.encoder.last_truncated
        images, frames = load_media(sample, slots, where)
        item: dict[str, Any] = {"input_ids": ids, "labels": labels, "images": images, "frames": frames}
        if self.encoder.with_instructions:
            item["instruction_ids"] = self.encoder.instructions(sample["messages"], slots)[: len(slots)]
        if cut:
            message = f"{where}: cut by {cut} tokens to max_seq_length {self.encoder.max_seq_length}"
            item[SKIPPED_KEY] = [{"reason": "truncated", "where": where, "message": message, TRUNCATED_FLAG: True}]
        return item

    def _skips(self, error: DataError) -> bool:
        """As :meth:`EncodedDataset._skips`: over-long by ``on_overlength``, the rest by ``on_bad_sample``."""
        if getattr(error, "reason", None) == "too-long":
            return self.encoder.on_overlength != "error"
        return self.skip_bad

    def _ended(self, stream: int, streams: int, read: int, pending: list[dict[str, Any]]) -> None:
        """Every source stopped giving this stream rows: an error unless it is one of several DataLoader
        workers of one process (the others carry on; under several processes one would stall the rest)."""
        which = f" (stream {stream + 1} of {streams}: processes x DataLoader workers)" if streams > 1 else ""
        if pending:
            raise DataError(
                f"datasets: no usable sample in {BARREN_PASSES} passes in a row{which}: the {read} row(s) it "
                f"read were all bad ({len(pending)} skipped; first: {pending[0]['message']})",
                reason="empty",
            )
        if streams == 1 or self.world_size > 1:
            raise DataError(
                f"datasets: no rows to stream{which}; the training files hold fewer records than the streams "
                f"reading them, or none",
                reason="empty",
            )

    def _positions(self) -> tuple[range, int]:
        """This process's positions in each run of items, and the run's length, as accelerate's
        ``IterableDatasetShard`` takes them (``split_batches`` or not)."""
        if self.split_batches:
            per, run = self.batch_size // self.world_size, self.batch_size
        else:
            per, run = self.batch_size, self.batch_size * self.world_size
        return range(self.rank * per, (self.rank + 1) * per), run

    def _placed(self, items: Iterator[dict[str, Any]]) -> Iterator[dict[str, Any] | None]:
        """``items`` at this process's positions of each run, ``None`` elsewhere (dropped unread by
        accelerate's shard); whole runs only, so the shard never pads a batch with placeholders."""
        own, run = self._positions()
        while True:
            batch = list(itertools.islice(items, len(own)))
            if len(batch) < len(own):
                return
            mine = iter(batch)
            for position in range(run):
                yield next(mine) if position in own else None


class StreamReport(SkipReport):
    """The run's skip report under streaming; records flagged :data:`TRUNCATED_FLAG` (samples cut to
    ``max_seq_length``) go to :attr:`truncated` instead, each row once."""

    def __init__(self) -> None:
        super().__init__()
        #: ``where`` of each sample cut to ``max_seq_length`` that the run read, first met first
        self.truncated: list[str] = []
        self._cut: set[str] = set()

    def add(self, error: DataError | dict) -> None:
        if isinstance(error, dict) and error.get(TRUNCATED_FLAG):
            where = str(error.get("where"))
            if where not in self._cut:
                self._cut.add(where)
                self.truncated.append(where)
            return
        super().add(error)


def require_streams(selections: Sequence[Any], sets: Sequence[Any], streaming_formats: Callable[[], list[str]]) -> None:
    """A ConfigError naming every training dataset whose format cannot stream (no ``stream()``), and the
    formats that can (``streaming_formats()``, asked only then)."""
    bad = [
        f"datasets[{i}]: format '{sel.name}' cannot stream (its dataset has no stream(); see "
        f"vlmplug.contracts.StreamingDatasetFormat)"
        for i, (sel, data) in enumerate(zip(selections, sets))
        if not callable(getattr(data, "stream", None))
    ]
    if not bad:
        return
    able = streaming_formats()
    bad.append(
        (f"formats that stream: {', '.join(able)}; " if able else "")
        + "convert the data with `vlmplug data convert PATH --out train.jsonl` (messages JSONL streams), "
        "or set streaming: false"
    )
    raise ConfigError(bad, header="streaming")
