"""Server configuration files (ZConfig): the reference's schema, our objects.

`load` reads a runzeo configuration file and returns a `ServerSettings`:
the storages to open, the `ServerConfig`, the address, the pid file and the
event log. A file written for the reference ZEO works unchanged.
"""

from __future__ import annotations

import dataclasses
import importlib
import os
import ssl
from typing import Any, Callable, Sequence

import ZConfig

from zeo.protocol import ProtocolLimits
from zeo.server.config import Address, ServerConfig

__all__ = [
    "SCHEMA",
    "ZEOCTL_SCHEMA",
    "ServerSettings",
    "ZeoSection",
    "load",
    "server_ssl",
    "server_ssl_context",
    "storage_names",
    "zeo_section",
]

HERE = os.path.dirname(os.path.abspath(__file__))
SCHEMA = os.path.join(HERE, "schema.xml")
ZEOCTL_SCHEMA = os.path.join(HERE, "zeoctl.xml")


def _dotted(name: str) -> Any:
    module, _, attribute = name.rpartition(".")
    if not module:
        raise ValueError(f"{name!r} is not a dotted name like package.module.function")
    return getattr(importlib.import_module(module), attribute)


def server_ssl_context(certificate: str, key: str | None = None,
                       authenticate: str = "DYNAMIC",
                       password: Callable[[], Any] | None = None) -> ssl.SSLContext:
    """A server TLS context that requires client certificates signed by the
    CA file or directory *authenticate* (``DYNAMIC``: load none here)."""
    cafile = capath = None
    if authenticate != "DYNAMIC":
        if os.path.isdir(authenticate):
            capath = authenticate
        elif os.path.isfile(authenticate):
            cafile = authenticate
        else:
            raise ValueError(
                f"ssl authenticate {authenticate!r} is neither a CA file, a CA"
                " directory, nor DYNAMIC")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=cafile, capath=capath)
    context.load_cert_chain(certificate, key, password)
    context.verify_mode = ssl.CERT_REQUIRED
    context.verify_flags |= ssl.VERIFY_X509_STRICT
    return context


def server_ssl(section: Any) -> ssl.SSLContext:
    """The ``<ssl>`` section of ``<zeo>``."""
    password = _dotted(section.password_function) if section.password_function else None
    return server_ssl_context(section.certificate, section.key, section.authenticate, password)


@dataclasses.dataclass(frozen=True)
class ZeoSection:
    """The ``<zeo>`` section, converted."""

    address: Address
    config: ServerConfig
    pid_filename: str | None


def zeo_section(section: Any) -> ZeoSection:
    fields: dict[str, Any] = {
        "read_only": section.read_only,
        "invalidation_queue_size": section.invalidation_queue_size,
        "invalidation_age": section.invalidation_age,
        "client_conflict_resolution": section.client_conflict_resolution,
        "handshake_timeout": section.handshake_timeout,
        "max_connections": section.max_connections,
        "max_iterators": section.max_iterators,
        "max_server_iterators": section.max_server_iterators,
        "worker_threads": section.worker_threads,
        "max_waiting_calls": section.max_waiting_calls,
        "max_history_entries": section.max_history_entries,
        "max_output_buffer": section.max_output_buffer,
        "max_label_length": section.max_label_length,
        "max_status_labels": section.max_status_labels,
        "max_spool_size": section.max_spool_size,
        "max_spool_total": section.max_spool_total,
        "limits": ProtocolLimits(max_frame_size=section.max_frame_size),
        "ssl": section.ssl,
    }
    if section.transaction_timeout is not None:
        fields["transaction_timeout"] = section.transaction_timeout
    if section.reader_stall_timeout is not None:
        fields["reader_stall_timeout"] = section.reader_stall_timeout
    if section.msgpack is not None:
        fields["msgpack"] = section.msgpack
    if section.event_loop is not None:
        fields["event_loop"] = section.event_loop
    if section.conflict_resolution_packages is not None:
        fields["conflict_resolution_packages"] = tuple(section.conflict_resolution_packages)
    # process-wide limits (zeo.server.budgets)
    fields["max_total_input_buffer"] = section.max_total_input_buffer
    fields["max_total_output_buffer"] = section.max_total_output_buffer
    fields["idle_timeout"] = section.idle_timeout
    fields["max_connections_per_address"] = section.max_connections_per_address
    fields["monitor_address"] = section.monitor_address
    fields["monitor_slow_transaction"] = section.monitor_slow_transaction
    fields["commit_source"] = section.commit_source
    fields["commit_source_notify"] = section.commit_source_notify
    fields["commit_source_poll_interval"] = section.commit_source_poll_interval
    fields["slow_commit_threshold"] = section.slow_commit_threshold or None
    fields["max_refusal_log_lines"] = section.max_refusal_log_lines
    fields["commit_source_primary_dsn"] = section.commit_source_primary_dsn
    fields["commit_source_catch_up_timeout"] = section.commit_source_catch_up_timeout
    fields["commit_threads"] = section.commit_threads
    fields["load_refs"] = section.load_refs
    fields["max_load_refs_records"] = section.max_load_refs_records
    fields["max_load_refs_bytes"] = section.max_load_refs_bytes
    address = getattr(section.address, "address", section.address)
    if isinstance(address, tuple):   # no port (``address HOST``): a free one
        address = (address[0] or "", address[1] or 0)
    return ZeoSection(address=address, config=ServerConfig(**fields),
                      pid_filename=section.pid_filename)


@dataclasses.dataclass
class ServerSettings:
    """Everything a configuration file says, ready to run."""

    address: Address
    config: ServerConfig
    storage_factories: dict[str, Any]
    pid_filename: str | None
    eventlog: Any
    runner: Any

    def open_storages(self) -> dict[str, Any]:
        return {name: factory.open() for name, factory in self.storage_factories.items()}


def storage_names(factories: list[Any]) -> dict[str, Any]:
    """Name each storage section: its section name, or '1' when unnamed."""
    named: dict[str, Any] = {}
    for factory in factories:
        name = factory.name or "1"
        if name in named:
            raise ValueError(
                f"two storage sections are named {name!r} (an unnamed section is"
                " '1'); give each a unique name")
        named[name] = factory
    return named


def load(path: str, overrides: Sequence[str] = (), schema_path: str = SCHEMA) -> ServerSettings:
    schema = ZConfig.loadSchema(schema_path)
    root, _ = ZConfig.loadConfig(schema, path, overrides=list(overrides))
    return ServerSettings(
        address=root.zeo.address,
        config=root.zeo.config,
        storage_factories=storage_names(root.storages),
        pid_filename=root.zeo.pid_filename,
        eventlog=root.eventlog,
        runner=getattr(root, "runner", None),
    )
