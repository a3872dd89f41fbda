"""Append clicks to the click streams with a group commit.

The clicks recorded during one turn of the event loop are written together
at the end of it, one stream entry per partition, on a connection of the
recorder's own (:class:`~boltlink.streamlink.StreamLink`) that does not wait
for one write's reply before it sends the next. A redirect's response is
released once the entry that holds its click is written, so an answered
redirect is a recorded click.

When Redis cannot be reached the clicks go to a bounded in-memory buffer
and the redirect is answered anyway; the buffer is written, oldest first,
as soon as Redis answers again. Clicks that do not fit are counted in
``boltlink_click_buffer_dropped_total`` and logged once per interval.

A worker that stops while Redis is still unreachable writes its buffer to
a spill file in ``DATA_DIR/spill`` rather than lose it; the next recorder
to start on that folder (any worker of the next ``serve``) takes the file
and writes its clicks to the stream, under their old write ids, before
anything newer. Redirects still answered while the recorder stops, or
after, have their clicks spilled too, to a file of their own.

A failed write may have reached Redis all the same (Redis applied it and
the reply was lost, or came after the timeout), and ``XADD *`` would give
a second copy a new id. So every entry carries a write id of its own (field
``w``, unique per recorder and entry) that the sinks deduplicate on, and an
entry that may have been written is kept and sent again unchanged, never
repacked with other clicks.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import itertools
import logging
import os
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
from prometheus_client import Counter, Gauge
from redis import exceptions as redis_errors

from boltlink.clicks import Click, MalformedEntry, encode_clicks, partition_of
from boltlink.processes import pid_alive
from boltlink.streamlink import StreamLink, pack_command

__all__ = ["ClickRecorder"]

logger = logging.getLogger("boltlink.redirect")

BUFFER_DEPTH = Gauge(
    "boltlink_click_buffer_depth",
    "Clicks held in memory while Redis is unreachable",
    multiprocess_mode="livesum",
)
BUFFER_DROPPED = Counter(
    "boltlink_click_buffer_dropped_total", "Clicks lost because the buffer was full"
)
CLICKS_RECORDED = Counter(
    "boltlink_clicks_recorded_total", "Clicks written to the click stream"
)

# Any Redis error, replies included (an OOM refusal under maxmemory, a
# failover's READONLY): the clicks wait in the buffer, never the redirect.
_REDIS_FAULTS = (redis_errors.RedisError, OSError)

#: About how many clicks one write of the buffer carries.
_CHUNK = 1000


@dataclass(frozen=True, slots=True)
class _Entry:
    """One stream entry as first sent; a retry sends exactly this again."""

    partition: int
    write_id: str
    clicks: list[Click]


class ClickRecorder:
    """Batch the clicks of concurrent redirects into pipelined stream writes."""

    def __init__(
        self,
        redis: Any,
        streams: list[str],
        *,
        maxlen: int,
        buffer_size: int,
        retry_interval: float = 0.5,
        spill_dir: Path | None = None,
    ) -> None:
        self._link = StreamLink(redis)
        self._spill_dir = spill_dir
        # Spill files this recorder took over; removed once written.
        self._claimed: list[Path] = []
        self._streams = streams
        self._stream_keys = [stream.encode() for stream in streams]
        self._maxlen = str(maxlen).encode()
        self._buffer_size = buffer_size
        self._retry_interval = retry_interval
        self._pending: list[tuple[Click, asyncio.Future[None]]] = []
        self._flush_due = False
        # The buffer: entries that may have been written, oldest first, then
        # clicks never sent yet, which may still be packed as we like.
        self._unsure: collections.deque[_Entry] = collections.deque()
        self._unsure_clicks = 0
        self._unsent: collections.deque[Click] = collections.deque()
        self._closing = False
        # Stopped: a click recorded from here on goes to a spill file at once.
        self._stopped = False
        self._spills = itertools.count()
        self._writer = secrets.token_hex(6)
        self._writes = itertools.count()
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._watcher: asyncio.Task[None] | None = None
        self._dropped_since_log = 0
        self._last_drop_log = 0.0

    async def start(self) -> None:
        """Take over spilled clicks, if any, and start the background writer."""
        with contextlib.suppress(*_REDIS_FAULTS):
            await self._link.connect()
        if self._spill_dir is not None:
            self._adopt(await asyncio.to_thread(self._claim_spills, self._spill_dir))
            # Written before the first redirect, so that they neither take
            # the buffer's room from new clicks nor wait behind them.
            with contextlib.suppress(*_REDIS_FAULTS):
                while self._unsure:
                    await self._write_oldest(_CHUNK)
            if not self.buffered:
                self._forget_claimed()
            self._watcher = asyncio.create_task(
                self._watch_spills(self._spill_dir), name="click-spills"
            )
        self._task = asyncio.create_task(self._run(), name="click-recorder")

    async def _watch_spills(self, folder: Path, interval: float = 5.0) -> None:
        # A worker of the previous server may still be stopping when this one
        # starts (serve was killed, its workers drain on their own): take
        # what it spills later as well.
        while True:
            await asyncio.sleep(interval)
            taken = await asyncio.to_thread(self._claim_spills, folder)
            if taken:
                self._adopt(taken)
                self._wakeup.set()

    async def record(self, click: Click) -> None:
        """Queue a click and return once it is written (or buffered)."""
        if self.buffered or self._closing:
            # Redis is known to be down: queue behind the buffered clicks
            # at once rather than wait for the next failed attempt. So do
            # the clicks of redirects that run while (or after) the recorder
            # stops: they are spilled with the buffer.
            self._keep_unsent([click])
            if self._stopped:
                self._spill_late()
            return
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        self._pending.append((click, future))
        if not self._flush_due:
            # Written once every redirect ready to run now has recorded too.
            self._flush_due = True
            loop.call_soon(self._flush)
        await future

    async def stop(self, timeout: float = 5.0) -> None:
        """Write what is pending, retrying the buffer until ``timeout``."""
        if self._task is None:
            return
        deadline = time.monotonic() + timeout
        if self._watcher is not None:
            self._watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watcher
            self._watcher = None
        while (
            self._pending or self._link.in_flight or self.buffered
        ) and time.monotonic() < deadline:
            self._wakeup.set()
            await asyncio.sleep(0.01)
        # The flag ends the writer even if the cancellation is lost on the
        # way (redis-py may turn one mid-command into a ConnectionError).
        self._closing = True
        self._wakeup.set()
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self._task = None
        # Writes still unanswered fail with the link, and their entries go to
        # the buffer with whatever was never sent.
        self._link.close()
        await asyncio.sleep(0)
        self._flush()
        if not self.buffered:
            self._forget_claimed()
        elif self._spill_dir is not None:
            # Taken on the loop, written in a thread: redirects that record
            # meanwhile queue in the emptied buffer, spilled below.
            entries = self._take_buffer()
            path = await asyncio.to_thread(self._spill, self._spill_dir, entries)
            logger.warning(
                "click recorder stopped with %d clicks unwritten, kept in %s for "
                "the next start",
                sum(len(entry.clicks) for entry in entries),
                path,
            )
        else:
            logger.warning(
                "click recorder stopped with %d buffered clicks unwritten",
                self.buffered,
            )
        self._stopped = True
        self._spill_late()

    @property
    def buffered(self) -> int:
        """Return how many clicks wait in the outage buffer."""
        return self._unsure_clicks + len(self._unsent)

    async def _run(self) -> None:
        # The writer of last resort: it opens the link again and writes the
        # buffer, oldest first, whenever a write has failed.
        while not self._closing:
            if self.buffered:
                await self._drain_buffer()
            await self._wakeup.wait()
            self._wakeup.clear()

    def _flush(self) -> None:
        """Send the clicks recorded since the last flush, or buffer them."""
        self._flush_due = False
        batch, self._pending = self._pending, []
        if not batch:
            return
        clicks = [click for click, _ in batch]
        # Keep order: while older clicks wait in the buffer, newer ones queue
        # behind them rather than overtake.
        if self.buffered or self._closing or not self._link.ready:
            self._keep_unsent(clicks)
            _release(batch)
            self._wakeup.set()
            return
        entries = self._pack(clicks)
        sent = self._link.send(self._payload(entries), len(entries))
        sent.add_done_callback(functools.partial(self._written, batch, entries))

    def _written(
        self,
        batch: list[tuple[Click, asyncio.Future[None]]],
        entries: list[_Entry],
        sent: asyncio.Future[None],
    ) -> None:
        error = sent.exception()
        if error is None:
            CLICKS_RECORDED.inc(len(batch))
        else:
            if not self.buffered:
                logger.warning("click stream unavailable, buffering clicks: %s", error)
            self._keep_unsure(entries)
            self._wakeup.set()
        _release(batch)

    def _pack(self, clicks: list[Click]) -> list[_Entry]:
        """Return one entry per partition for ``clicks``, each with a new write id."""
        if len(self._streams) == 1:
            return [_Entry(0, f"{self._writer}-{next(self._writes)}", clicks)]
        by_partition: dict[int, list[Click]] = collections.defaultdict(list)
        for click in clicks:
            by_partition[partition_of(click.link_id, len(self._streams))].append(click)
        return [
            _Entry(partition, f"{self._writer}-{next(self._writes)}", part)
            for partition, part in by_partition.items()
        ]

    def _payload(self, entries: list[_Entry]) -> bytes:
        """Return the ``XADD`` commands that append ``entries``."""
        commands = []
        for entry in entries:
            parts = [
                b"XADD",
                self._stream_keys[entry.partition],
                b"MAXLEN",
                b"~",
                self._maxlen,
                b"*",
            ]
            for name, value in encode_clicks(
                entry.clicks, write_id=entry.write_id
            ).items():
                parts += (name, value)
            commands.append(pack_command(*parts))
        return b"".join(commands)

    async def _append(self, entries: list[_Entry]) -> None:
        """Write ``entries`` and wait for the replies; raise on failure."""
        await self._link.connect()
        await self._link.send(self._payload(entries), len(entries))
        CLICKS_RECORDED.inc(sum(len(entry.clicks) for entry in entries))

    def _keep_unsure(self, entries: list[_Entry]) -> None:
        dropped = 0
        for entry in entries:
            room = self._buffer_size - self.buffered
            if room <= 0:
                dropped += len(entry.clicks)
                continue
            if room < len(entry.clicks):
                # Fewer clicks under the same write id: if the whole entry
                # did reach Redis, this part is dropped as a copy of it.
                dropped += len(entry.clicks) - room
                entry = _Entry(entry.partition, entry.write_id, entry.clicks[:room])
            self._unsure.append(entry)
            self._unsure_clicks += len(entry.clicks)
        self._count_drops(dropped)

    def _keep_unsent(self, clicks: list[Click]) -> None:
        room = max(self._buffer_size - self.buffered, 0)
        self._unsent.extend(clicks[:room])
        self._count_drops(len(clicks) - min(room, len(clicks)))

    def _count_drops(self, dropped: int) -> None:
        if dropped > 0:
            BUFFER_DROPPED.inc(dropped)
            self._dropped_since_log += dropped
            self._log_drops()
        BUFFER_DEPTH.set(self.buffered)

    def _log_drops(self, interval: float = 10.0) -> None:
        now = time.monotonic()
        if now - self._last_drop_log >= interval:
            logger.error(
                "click buffer full (%d clicks), dropped %d clicks",
                self._buffer_size,
                self._dropped_since_log,
            )
            self._dropped_since_log = 0
            self._last_drop_log = now

    async def _drain_buffer(self, chunk: int = _CHUNK) -> None:
        # Write the oldest entries first, about a chunk of clicks at a time;
        # on failure wait and try again, new clicks queueing behind.
        while self.buffered and not self._closing:
            if not self._unsure:
                self._pack_unsent(chunk)
            try:
                await self._write_oldest(chunk)
            except _REDIS_FAULTS:
                await asyncio.sleep(self._retry_interval)
        if not self.buffered:
            self._forget_claimed()
            logger.info("click stream reachable again, buffer written")

    async def _write_oldest(self, chunk: int) -> None:
        """Write about ``chunk`` clicks of the oldest entries; raise on failure."""
        entries = self._oldest_unsure(chunk)
        await self._append(entries)
        for entry in entries:
            self._unsure.popleft()
            self._unsure_clicks -= len(entry.clicks)
        BUFFER_DEPTH.set(self.buffered)

    def _pack_unsent(self, chunk: int) -> None:
        # From here on these clicks may reach Redis: they stay in these
        # entries until one write of them is known to have succeeded.
        clicks = [self._unsent.popleft() for _ in range(min(chunk, len(self._unsent)))]
        for entry in self._pack(clicks):
            self._unsure.append(entry)
            self._unsure_clicks += len(entry.clicks)

    def _oldest_unsure(self, chunk: int) -> list[_Entry]:
        entries: list[_Entry] = []
        clicks = 0
        for entry in self._unsure:
            if entries and clicks + len(entry.clicks) > chunk:
                break
            entries.append(entry)
            clicks += len(entry.clicks)
        return entries

    # -- spill files: the buffer kept on disk across a stop ---------------------

    def _take_buffer(self) -> list[_Entry]:
        """Empty the buffer into entries, oldest first, for a spill file."""
        # Packed as the drain packs them: one entry of a whole buffer would
        # be one command of up to hundreds of megabytes for the next start.
        while self._unsent:
            self._pack_unsent(_CHUNK)
        entries = list(self._unsure)
        self._unsure.clear()
        self._unsure_clicks = 0
        BUFFER_DEPTH.set(self.buffered)
        return entries

    def _spill_late(self) -> None:
        # A stopped recorder writes no more: what it was given since goes to
        # a file of its own before the redirect answers (on the loop, so that
        # nothing slips in between).
        if self._spill_dir is not None and self.buffered:
            entries = self._take_buffer()
            count = sum(len(entry.clicks) for entry in entries)
            try:
                path = self._spill(self._spill_dir, entries)
            except OSError as exc:
                # The redirect is answered all the same; the loss is counted.
                BUFFER_DROPPED.inc(count)
                logger.error(
                    "click recorder stopped: %d clicks recorded since lost, "
                    "no spill file: %s",
                    count,
                    exc,
                )
                return
            logger.warning(
                "click recorder stopped: %d clicks recorded since kept in %s",
                count,
                path,
            )

    def _spill(self, folder: Path, entries: list[_Entry]) -> Path:
        """Write ``entries`` to a new spill file; return its path.

        Runs in a thread: it reads ``entries`` only, never the buffer.
        """
        folder.mkdir(parents=True, exist_ok=True)
        number = next(self._spills)
        suffix = f"-{number}" if number else ""
        path = folder / f"clicks-{self._writer}-{os.getpid()}{suffix}.jsonl"
        partial = path.with_suffix(".partial")
        with partial.open("wb") as out:
            for entry in entries:
                line = {
                    "p": entry.partition,
                    "w": entry.write_id,
                    "c": [click.to_wire() for click in entry.clicks],
                }
                out.write(orjson.dumps(line) + b"\n")
            out.flush()
            os.fsync(out.fileno())
        # Complete or absent: a reader never sees half a file.
        partial.rename(path)
        self._forget_claimed()
        return path

    def _claim_spills(self, folder: Path) -> list[tuple[Path, list[_Entry], int]]:
        """Claim the spill files of stopped recorders; return their entries.

        Runs in a thread: it reads files only, the buffer is changed on the
        event loop (:meth:`_adopt`).
        """
        if not folder.is_dir():
            return []
        taken = []
        for path in sorted(folder.glob("clicks-*.jsonl*")):
            claimed = _claim(path)
            if claimed is not None:
                taken.append((claimed, *_read_spill(claimed, len(self._streams))))
        return taken

    def _adopt(self, taken: list[tuple[Path, list[_Entry], int]]) -> None:
        for claimed, entries, bad in taken:
            if bad:
                logger.error("spill file %s: %d unreadable lines skipped", claimed, bad)
            for entry in entries:
                self._unsure.append(entry)
                self._unsure_clicks += len(entry.clicks)
            self._claimed.append(claimed)
            logger.info(
                "taking over %d clicks spilled by a stopped worker (%s)",
                sum(len(e.clicks) for e in entries),
                claimed.name,
            )
        BUFFER_DEPTH.set(self.buffered)

    def _forget_claimed(self) -> None:
        # Their clicks are in the stream now, or in this recorder's own spill.
        for path in self._claimed:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
        self._claimed = []


def _claim(path: Path) -> Path | None:
    """Rename a spill file to this process's name; None if another has it."""
    stem, claimed_by, owner = path.name.partition(".jsonl.claimed-")
    if claimed_by:
        # Taken by a process that died before writing it: take it over.
        if not owner.isdigit() or int(owner) == os.getpid() or pid_alive(int(owner)):
            return None
    elif path.name.endswith(".jsonl"):
        stem = path.name.removesuffix(".jsonl")
    else:
        return None
    claimed = path.with_name(f"{stem}.jsonl.claimed-{os.getpid()}")
    try:
        path.rename(claimed)
    except FileNotFoundError:
        return None  # another worker took it first
    return claimed


def _read_spill(path: Path, partitions: int) -> tuple[list[_Entry], int]:
    """Return the entries of a spill file and how many lines were unreadable."""
    entries: list[_Entry] = []
    bad = 0
    for line in path.read_bytes().splitlines():
        try:
            item = orjson.loads(line)
            clicks = [Click.from_wire(wire) for wire in item["c"]]
            write_id, partition = item["w"], item["p"]
            if not clicks or not isinstance(write_id, str):
                raise MalformedEntry("spilled entry without clicks or write id")
            if not isinstance(partition, int) or isinstance(partition, bool):
                raise MalformedEntry("spilled entry without a partition")
        except (orjson.JSONDecodeError, MalformedEntry, KeyError, TypeError):
            bad += 1
            continue
        # A changed partition count: keep the entry whole, in range.
        entries.append(_Entry(partition % partitions, write_id, clicks))
    return entries, bad


def _release(batch: list[tuple[Click, asyncio.Future[None]]]) -> None:
    """Let the redirects of ``batch`` answer: their clicks are written or kept."""
    for _, future in batch:
        if not future.done():
            future.set_result(None)
