"""The server's configuration: one explicit, validated, immutable object.

Nothing in the server reads the environment; runzeo and the ZConfig schema
build a `ServerConfig` and pass it down.
"""

from __future__ import annotations

import dataclasses
import math
import ssl as _ssl
from typing import Any, Union

from zeo.protocol import ProtocolLimits

from zeo.server.loops import DEFAULT_EVENT_LOOP, check_event_loop

__all__ = [
    "Address",
    "DEFAULT_TRANSACTION_TIMEOUT",
    "DEFAULT_HANDSHAKE_TIMEOUT",
    "DEFAULT_INVALIDATION_QUEUE_SIZE",
    "DEFAULT_MAX_CONNECTIONS",
    "DEFAULT_BLOB_CHUNK_SIZE",
    "DEFAULT_MAX_ITERATORS",
    "DEFAULT_MAX_SERVER_ITERATORS",
    "DEFAULT_WORKER_THREADS",
    "DEFAULT_MAX_WAITING_CALLS",
    "DEFAULT_MAX_HISTORY_ENTRIES",
    "DEFAULT_CONFLICT_RESOLUTION_PACKAGES",
    "DEFAULT_READER_STALL_TIMEOUT",
    "DEFAULT_MAX_SPOOL_SIZE",
    "DEFAULT_MAX_SPOOL_TOTAL",
    "DEFAULT_MAX_OUTPUT_BUFFER",
    "DEFAULT_MAX_LABEL_LENGTH",
    "DEFAULT_MAX_STATUS_LABELS",
    "DEFAULT_MAX_TOTAL_INPUT_BUFFER",
    "DEFAULT_MAX_TOTAL_OUTPUT_BUFFER",
    "DEFAULT_MAX_CONNECTIONS_PER_ADDRESS",
    "DEFAULT_MONITOR_SLOW_TRANSACTION",
    "DEFAULT_COMMIT_THREADS",
    "DEFAULT_MAX_LOAD_REFS_RECORDS",
    "DEFAULT_MAX_LOAD_REFS_BYTES",
    "ServerConfig",
]

#: A TCP address ``(host, port)`` or a Unix socket path.
Address = Union[tuple[str, int], str]

#: The reference documents 30 s; we make it the real default. A transaction
#: that holds the commit lock longer than this is aborted, and the votes
#: waiting for the lock are answered with ConflictError (commit_lock, Rule 5).
DEFAULT_TRANSACTION_TIMEOUT = 30.0
#: A connection that has not finished the handshake by then is closed.
DEFAULT_HANDSHAKE_TIMEOUT = 10.0
#: The reference's default length of the per-storage invalidation queue.
DEFAULT_INVALIDATION_QUEUE_SIZE = 100
#: Connections beyond this are closed on accept, with a log line.
DEFAULT_MAX_CONNECTIONS = 10_000
#: Bytes of blob data sent per ``receiveBlobChunk``. The reference sends
#: 59,000; larger chunks move big blobs with fewer messages, and every
#: client accepts any size under its frame limit.
DEFAULT_BLOB_CHUNK_SIZE = 1 << 20
#: Server-side iterators one connection may hold open at once.
DEFAULT_MAX_ITERATORS = 100
#: Transaction iterators the whole server may hold open at once, over all
#: connections and storages: each holds an open file (see
#: zeo.server.iterators). runzeo makes room for them in the descriptor limit.
DEFAULT_MAX_SERVER_ITERATORS = 256
#: Worker threads, process-wide, that run the storage calls whose cost
#: grows with the database (see zeo.server.slow_calls); packs have their
#: own thread per storage.
DEFAULT_WORKER_THREADS = 4
#: Slow storage calls one connection may have waiting behind its running
#: one; more are refused with an error reply.
DEFAULT_MAX_WAITING_CALLS = 100
#: Most entries one ``undoLog`` / ``undoInfo`` call returns, and the largest
#: ``history`` size: larger requests are cut to this.
DEFAULT_MAX_HISTORY_ENTRIES = 1000
#: The packages whose persistent classes may resolve write conflicts on the
#: server (see zeo.server.conflicts).
DEFAULT_CONFLICT_RESOLUTION_PACKAGES = ("BTrees", "persistent", "ZODB")
#: Seconds a connection's replies may stay backed up (the client not
#: reading them) before its turn for the commit lock passes it over: its
#: waiting vote is answered with ConflictError instead of taking the lock it
#: could not be told about. Honest clients drain within moments, even while
#: a blob streams to them.
DEFAULT_READER_STALL_TIMEOUT = 5.0
#: Bytes one transaction may spool (stores and blobs) before its commit.
DEFAULT_MAX_SPOOL_SIZE = 1 << 30
#: Bytes all open transactions of the server may spool together, blob
#: uploads included: four transactions at the per-transaction bound. The
#: per-transaction bound alone lets every connection fill the temporary
#: disk once; this bounds the sum, which is what has to fit on that disk.
DEFAULT_MAX_SPOOL_TOTAL = 4 << 30
#: Bytes of replies and notifications one connection may have waiting to be
#: sent. A client that stops reading while invalidations pile up is closed
#: at this point instead of growing the server without bound. It must hold
#: at least one message of the largest size: when not configured, the limit
#: is this or twice the frame limit, whichever is larger.
DEFAULT_MAX_OUTPUT_BUFFER = 128 << 20
#: Characters of a client's label (``set_client_label``) kept; a longer
#: label is cut, with one log line per connection.
DEFAULT_MAX_LABEL_LENGTH = 200
#: Labels listed in a storage's ``connections_by_label`` status (``ruok``,
#: ``server_status``): those with the most connections; the rest are
#: counted together under ``connections_by_label_omitted``.
DEFAULT_MAX_STATUS_LABELS = 100
#: Seconds a transaction may wait for or hold its storage's commit lock
#: before its end is logged as a slow commit (WARNING).
DEFAULT_SLOW_COMMIT_THRESHOLD = 5.0
#: Log lines a minute about refused connections and failed handshakes (TLS
#: or ZEO); the rest are counted in one line a minute (zeo.server.eventlog).
DEFAULT_MAX_REFUSAL_LOG_LINES = 10

# -- process-wide limits (see zeo.server.budgets) ------------------------------
#: Bytes of partial requests all connections together may hold (input read
#: but not yet a whole message). 1 GiB admits 16 clients each in the middle
#: of a maximum-size (64 MiB) message, or thousands sending ordinary ones;
#: when not configured, the limit is this or 16 times the frame limit,
#: whichever is larger. Over it, the biggest holders are closed.
DEFAULT_MAX_TOTAL_INPUT_BUFFER = 1 << 30
#: Bytes of unsent output all connections together may have waiting. When
#: not configured, the limit is this or 8 times the per-connection output
#: limit, whichever is larger (1 GiB with the defaults). Over it, the
#: connections with the most unsent output are aborted.
DEFAULT_MAX_TOTAL_OUTPUT_BUFFER = 1 << 30
#: TCP connections one IP address may hold; beyond, closed on accept. ZEO
#: sites run many application processes per host, each with a connection
#: per storage. Unix socket connections count only toward max_connections.
DEFAULT_MAX_CONNECTIONS_PER_ADDRESS = 1000

# -- loads that bring referenced records (see zeo.server.load_refs) -----------
#: Per call, per connection: most extra records a ``loadBeforeRefs`` reply
#: carries (at most twice as many loads tried); a connection also keeps
#: up to 256 times as many oids (8 bytes each: 128 KiB with the
#: default) to go on with its walk.
DEFAULT_MAX_LOAD_REFS_RECORDS = 64
#: Per call, per connection: most bytes of extra record data in one reply.
DEFAULT_MAX_LOAD_REFS_BYTES = 256 * 1024

# -- the monitor endpoint (see zeo.server.monitor) -----------------------------
#: Seconds of holding the commit lock from which a transaction is listed
#: among a storage's recent slow transactions on the status page.
DEFAULT_MONITOR_SLOW_TRANSACTION = 1.0

# -- several fronts over one database (see zeo.server.commit_sources) ----------
#: The commit sources ``commit_source`` may name.
COMMIT_SOURCES = ("postgresql",)
#: The values ``commit_threads`` may take.
COMMIT_THREADS = ("auto", "on", "off")
#: Seconds between a commit source's polls: the safety poll behind
#: notifications, or the only mechanism without them.
DEFAULT_COMMIT_SOURCE_POLL_INTERVAL = 1.0
#: Where storage-level commits run (see zeo.server.commit_threads):
#: ``"auto"`` runs them in threads for MVCC storages with ``new_instance``
#: (RelStorage), on the event loop for the others.
DEFAULT_COMMIT_THREADS = "auto"
#: Most seconds a front on a hot standby holds a registering client's
#: ``register`` until it has replayed the primary's newest commit.
DEFAULT_COMMIT_SOURCE_CATCH_UP_TIMEOUT = 10.0


def _check_seconds(name: str, value: Any, *, allow_none: bool = True) -> float | None:
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) \
            or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a positive number of seconds, got {value!r}")
    return float(value)


def _check_count(name: str, value: Any, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return value


@dataclasses.dataclass(frozen=True)
class ServerConfig:
    """How a storage server behaves. Every field has a safe default.

    ``msgpack`` chooses the announced encoding: pickle (``Z5``, the
    default, as in ZEO; decoded with a restricted unpickler) or msgpack
    (``M5``). A client must answer with the encoding announced, and a ZEO
    client without the optional msgpack package cannot answer ``M5``.
    """

    read_only: bool = False
    invalidation_queue_size: int = DEFAULT_INVALIDATION_QUEUE_SIZE
    invalidation_age: float | None = None
    transaction_timeout: float | None = DEFAULT_TRANSACTION_TIMEOUT
    handshake_timeout: float = DEFAULT_HANDSHAKE_TIMEOUT
    reader_stall_timeout: float | None = DEFAULT_READER_STALL_TIMEOUT
    client_conflict_resolution: bool = False
    msgpack: bool = False
    max_connections: int = DEFAULT_MAX_CONNECTIONS
    max_iterators: int = DEFAULT_MAX_ITERATORS
    max_server_iterators: int = DEFAULT_MAX_SERVER_ITERATORS
    worker_threads: int = DEFAULT_WORKER_THREADS
    max_waiting_calls: int = DEFAULT_MAX_WAITING_CALLS
    max_history_entries: int = DEFAULT_MAX_HISTORY_ENTRIES
    max_spool_size: int | None = DEFAULT_MAX_SPOOL_SIZE
    #: Process-wide: see DEFAULT_MAX_SPOOL_TOTAL (None: no limit).
    max_spool_total: int | None = DEFAULT_MAX_SPOOL_TOTAL
    blob_chunk_size: int = DEFAULT_BLOB_CHUNK_SIZE
    max_output_buffer: int | None = None
    max_label_length: int = DEFAULT_MAX_LABEL_LENGTH
    max_status_labels: int = DEFAULT_MAX_STATUS_LABELS
    limits: ProtocolLimits = dataclasses.field(default_factory=ProtocolLimits)
    ssl: _ssl.SSLContext | None = None
    #: ``"uvloop"`` or ``"asyncio"`` (see zeo.server.loops).
    event_loop: str = DEFAULT_EVENT_LOOP
    #: Top-level packages whose classes may resolve conflicts here.
    conflict_resolution_packages: tuple[str, ...] = DEFAULT_CONFLICT_RESOLUTION_PACKAGES
    # -- process-wide limits (see zeo.server.budgets) --
    #: None: see ``DEFAULT_MAX_TOTAL_INPUT_BUFFER`` (``total_input_limit``).
    max_total_input_buffer: int | None = None
    #: None: see ``DEFAULT_MAX_TOTAL_OUTPUT_BUFFER`` (``total_output_limit``).
    max_total_output_buffer: int | None = None
    #: Seconds after the handshake a connection may send nothing (and have
    #: no transaction, vote, call or output in progress) before it is
    #: closed; None (the default): never.
    idle_timeout: float | None = None
    max_connections_per_address: int = DEFAULT_MAX_CONNECTIONS_PER_ADDRESS
    #: ``(host, port)`` of the monitor endpoint (metrics, status page;
    #: needs ``zeo.server[monitor]``); None (the default): no endpoint.
    monitor_address: tuple[str, int] | None = None
    monitor_slow_transaction: float = DEFAULT_MONITOR_SLOW_TRANSACTION
    #: ``"postgresql"``: every storage is a RelStorage on PostgreSQL shared
    #: with other fronts, whose commits a `PostgresCommitSource` finds
    #: (zeo.server.relstorage_source); None (the default): no source.
    commit_source: str | None = None
    #: Listen for the database's notifications (else poll alone).
    commit_source_notify: bool = True
    commit_source_poll_interval: float = DEFAULT_COMMIT_SOURCE_POLL_INTERVAL
    # -- logging (see zeo.server.eventlog) --
    #: None: never log slow commits.
    slow_commit_threshold: float | None = DEFAULT_SLOW_COMMIT_THRESHOLD
    max_refusal_log_lines: int = DEFAULT_MAX_REFUSAL_LOG_LINES
    #: A front on a hot standby: the primary's DSN, asked for its newest
    #: commit when a client registers (zeo.server.relstorage_standby);
    #: None (the default): registering clients do not wait.
    commit_source_primary_dsn: str | None = None
    commit_source_catch_up_timeout: float = DEFAULT_COMMIT_SOURCE_CATCH_UP_TIMEOUT
    #: ``"auto"``, ``"on"`` or ``"off"``: run each storage's tpc_begin ...
    #: tpc_finish in a thread, on an instance per transaction (see
    #: zeo.server.commit_threads), or on the event loop.
    commit_threads: str = DEFAULT_COMMIT_THREADS
    #: Offer our clients loads that bring referenced records (zeo.server.load_refs).
    load_refs: bool = True
    max_load_refs_records: int = DEFAULT_MAX_LOAD_REFS_RECORDS
    max_load_refs_bytes: int = DEFAULT_MAX_LOAD_REFS_BYTES

    def __post_init__(self) -> None:
        check_event_loop(self.event_loop)
        packages = self.conflict_resolution_packages
        if not isinstance(packages, tuple) or not all(
                isinstance(p, str) and p.isidentifier() for p in packages):
            raise ValueError("conflict_resolution_packages must be a tuple of top-level"
                             f" package names, not {packages!r}")
        _check_count("invalidation_queue_size", self.invalidation_queue_size, 0)
        _check_seconds("invalidation_age", self.invalidation_age)
        _check_seconds("transaction_timeout", self.transaction_timeout)
        _check_seconds("handshake_timeout", self.handshake_timeout, allow_none=False)
        _check_seconds("reader_stall_timeout", self.reader_stall_timeout)
        _check_count("max_connections", self.max_connections)
        _check_count("max_iterators", self.max_iterators)
        _check_count("max_server_iterators", self.max_server_iterators)
        _check_count("worker_threads", self.worker_threads)
        _check_count("max_waiting_calls", self.max_waiting_calls, 0)
        _check_count("max_history_entries", self.max_history_entries)
        if self.max_spool_size is not None:
            _check_count("max_spool_size", self.max_spool_size)
        if self.max_spool_total is not None:
            _check_count("max_spool_total", self.max_spool_total)
        _check_count("blob_chunk_size", self.blob_chunk_size)
        if self.blob_chunk_size > self.limits.max_frame_size // 2:
            raise ValueError(
                f"blob_chunk_size {self.blob_chunk_size} must be well under the"
                f" maximum frame size {self.limits.max_frame_size}")
        if self.max_output_buffer is not None:
            _check_count("max_output_buffer", self.max_output_buffer)
        _check_count("max_label_length", self.max_label_length)
        _check_count("max_status_labels", self.max_status_labels, 0)
        if self.output_buffer_limit < self.limits.max_frame_size:
            raise ValueError(
                f"max_output_buffer {self.max_output_buffer} must hold one"
                f" message of the maximum frame size {self.limits.max_frame_size}")
        self._check_process_wide_limits()

    def _check_process_wide_limits(self) -> None:
        _check_seconds("idle_timeout", self.idle_timeout)
        _check_count("max_connections_per_address", self.max_connections_per_address)
        _check_seconds("monitor_slow_transaction", self.monitor_slow_transaction,
                       allow_none=False)
        if self.commit_source is not None and self.commit_source not in COMMIT_SOURCES:
            raise ValueError(f"commit_source must be one of {COMMIT_SOURCES} or None,"
                             f" not {self.commit_source!r:.100}")
        _check_seconds("commit_source_poll_interval", self.commit_source_poll_interval,
                       allow_none=False)
        _check_seconds("commit_source_catch_up_timeout",
                       self.commit_source_catch_up_timeout, allow_none=False)
        if self.commit_threads not in COMMIT_THREADS:
            raise ValueError(f"commit_threads must be one of {COMMIT_THREADS},"
                             f" not {self.commit_threads!r:.100}")
        address = self.monitor_address
        if address is not None and not (
                isinstance(address, tuple) and len(address) == 2
                and isinstance(address[0], str) and type(address[1]) is int
                and 0 <= address[1] < 65536):
            raise ValueError(f"monitor_address must be (host, port), not {address!r}")
        _check_seconds("slow_commit_threshold", self.slow_commit_threshold)
        _check_count("max_refusal_log_lines", self.max_refusal_log_lines)
        _check_count("max_load_refs_records", self.max_load_refs_records)
        _check_count("max_load_refs_bytes", self.max_load_refs_bytes)
        for name in ("max_total_input_buffer", "max_total_output_buffer"):
            value = getattr(self, name)
            if value is not None:
                _check_count(name, value)
                if value < self.limits.max_frame_size:
                    raise ValueError(
                        f"{name} {value} must hold one message of the maximum"
                        f" frame size {self.limits.max_frame_size}")

    @property
    def total_input_limit(self) -> int:
        """Bytes of partial input all connections together may hold (see
        ``DEFAULT_MAX_TOTAL_INPUT_BUFFER``)."""
        if self.max_total_input_buffer is not None:
            return self.max_total_input_buffer
        return max(DEFAULT_MAX_TOTAL_INPUT_BUFFER, 16 * self.limits.max_frame_size)

    @property
    def total_output_limit(self) -> int:
        """Bytes of unsent output all connections together may have (see
        ``DEFAULT_MAX_TOTAL_OUTPUT_BUFFER``)."""
        if self.max_total_output_buffer is not None:
            return self.max_total_output_buffer
        return max(DEFAULT_MAX_TOTAL_OUTPUT_BUFFER, 8 * self.output_buffer_limit)

    @property
    def output_buffer_limit(self) -> int:
        """Bytes a connection may have waiting to be sent (see
        ``DEFAULT_MAX_OUTPUT_BUFFER``)."""
        if self.max_output_buffer is not None:
            return self.max_output_buffer
        return max(DEFAULT_MAX_OUTPUT_BUFFER, 2 * self.limits.max_frame_size)

    @property
    def encoding(self) -> str:
        """The encoding letter announced to clients: ``'M'`` or ``'Z'``."""
        return "M" if self.msgpack else "Z"
