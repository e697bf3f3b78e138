"""Test support for zeo.client's own tests (internal; applications use
``zeo.server.testing``, which these build on where they need a server).

- servers: `free_port`, `ServerFixture` (a real in-process server,
  ``zeo.server.server()``, that tests stop and restart on one port), what
  a client needs of a DB (`RecordingDB`), `commit`, `wait_until`, `FAST`;
- child processes: `child_env` (the environment of a Python subprocess
  that imports what the tests import);
- a channel without a network: `Transport`, `Handler`, `Waiter`, `feed`;
- caches: `p64`, `content`, `BlobCacheTestBase` (blob caches in a temporary
  directory), `intact_records` and `indexed_offsets` (a persistent cache's
  records found by brute force, and those its index holds);
- configuration: `parse` (a ``<clientstorage>`` section, converted) and
  `section` (one written).
"""
from __future__ import annotations

import asyncio
import io
import os
import shutil
import sys
import tempfile
import time
import unittest
from typing import Any, Callable

import ZConfig
import ZODB.config
from ZODB.Connection import TransactionMetaData
from ZODB.FileStorage import FileStorage
from ZODB.utils import p64

import zeo.server
from zeo.server.testing import free_port
from zeo.client.connections import locks
from zeo.client.cache import file_format as fmt
from zeo.client.blobs.cache import BlobCache
from zeo.client.storage import ClientStorage

__all__ = ['BlobCacheTestBase', 'FAST', 'Handler', 'OID1', 'OID2', 'RecordingDB',
           'ServerFixture', 'Transport', 'Waiter', 'child_env', 'commit', 'content', 'feed',
           'free_port', 'indexed_offsets', 'intact_records', 'p64', 'parse', 'section',
           'wait_until']

OID1, OID2 = p64(1), p64(2)

# zeo.client's tests run with the client's locks checked: taking them out
# of order, or waiting while holding one, raises LockOrderError (the
# rules are in zeo.client.connections).
locks.CHECK = True

#: Fast reconnects for tests.
FAST = dict(disconnect_poll=0.05, max_disconnect_poll=0.2, wait_timeout=10)


def child_env(**variables: str) -> dict[str, str]:
    """``os.environ`` with ``PYTHONPATH`` set to our ``sys.path`` (its
    non-empty entries), and *variables* set: for a ``sys.executable``
    subprocess that imports what the tests import (under the test runner,
    our packages are on ``sys.path``, not on the interpreter's own path)."""
    path = os.pathsep.join(p for p in sys.path if p)
    return dict(os.environ, PYTHONPATH=path, **variables)


def wait_until(condition: Callable[[], Any], timeout: float = 30.0,
               interval: float = 0.01, message: str = 'condition') -> None:
    """Poll *condition* until true; an AssertionError after *timeout*."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f'timed out waiting for {message}')
        time.sleep(interval)


class RecordingDB:
    """What a client storage needs of a DB, recording what it is told."""

    def __init__(self):
        self.invalidated = []
        self.cache_invalidations = 0

    def invalidate(self, tid, oids):
        self.invalidated.append((tid, sorted(oids)))

    def invalidateCache(self):
        self.cache_invalidations += 1

    def transform_record_data(self, data):
        return data

    untransform_record_data = transform_record_data


def commit(client, *stores):
    """Commit ``(oid, previous_tid, data)`` stores; return the tid."""
    t = TransactionMetaData()
    client.tpc_begin(t)
    for oid, prev, data in stores:
        client.store(oid, prev, data, '', t)
    client.tpc_vote(t)
    return client.tpc_finish(t)


class ServerFixture(unittest.TestCase):
    """A FileStorage server on a fixed port that tests stop and restart.

    *server_options* go to every ``zeo.server.server()`` call (a subclass
    may set them in ``setUp`` before calling this one's); `client_options`
    to every `client`."""

    server_options: dict = {}
    client_options: dict = {}

    def setUp(self):
        self.directory = tempfile.mkdtemp(prefix='zeo-client-')
        self.addCleanup(shutil.rmtree, self.directory, True)
        self.path = os.path.join(self.directory, 'Data.fs')
        self.port = free_port()
        self.stop_server = None
        self.start_server()
        self.addCleanup(self.stop)

    def start_server(self, storage=None, port=None, **options):
        """Serve *storage* (default: the FileStorage) on our port, or on
        *port* as a second server (which the caller stops)."""
        storage = storage if storage is not None else FileStorage(self.path)
        address, stop = zeo.server.server(
            storages={'1': storage}, port=self.port if port is None else port,
            **{**self.server_options, **options})
        if port is None:
            self.address, self.stop_server = address, stop
        return address, stop

    def stop(self):
        if self.stop_server is not None:
            self.stop_server()
            self.stop_server = None

    def client(self, address=None, **options):
        db = options.pop('db', None)
        client = ClientStorage(address or self.address,
                               **{**FAST, **self.client_options, **options})
        self.addCleanup(client.close)
        client.registerDB(db or RecordingDB())
        return client

    def reopen(self, connected=True, **options):
        """A client created while the server is down, with a recording DB
        registered before it connects; then the server is started (and,
        if *connected*, the client's connection awaited)."""
        db = RecordingDB()
        client = self.client(wait=False, db=db, **options)
        self.assertFalse(client.is_connected())
        self.start_server()
        if connected:
            wait_until(client.is_connected, message='a connection')
        return client, db


class Transport(asyncio.Transport):
    """Records what a protocol writes."""

    def __init__(self):
        super().__init__()
        self.written = []
        self.closing = False

        self.pieces = []

    def write(self, data):
        self.written.append(bytes(data))

    def writelines(self, pieces):
        self.pieces.extend(pieces)
        self.written.append(b''.join(pieces))

    def is_closing(self):
        return self.closing

    def close(self):
        self.closing = True


def feed(adapter, data, piece=None):
    """Hand *data* to *adapter* as its transport would: into the buffer
    it gives, at most *piece* bytes at a time."""
    data = memoryview(data)
    while data:
        buffer = adapter.get_buffer(-1)
        n = min(len(buffer), len(data), piece or len(data))
        buffer[:n] = data[:n]
        data = data[n:]
        adapter.buffer_updated(n)


class Handler:
    """Records what a Channel tells its handler."""

    def __init__(self):
        self.events = []

    def protocol_agreed(self, protocol):
        self.events.append(('agreed',))

    def protocol_lost(self, protocol, exc):
        self.events.append(('lost', exc))

    def load_reply(self, protocol, oid, tid, result):
        self.events.append(('load', oid, tid, result))

    def server_message(self, protocol, method, args):
        self.events.append(('message', method, args))


class Waiter:
    """A future's setters, recorded in *log* under *name*."""

    def __init__(self, log, name):
        self.log, self.name = log, name

    def set_result(self, value):
        self.log.append((self.name, 'result', value))

    def set_exception(self, error):
        self.log.append((self.name, 'error', error))


def content(oid, tid, size=None):
    """Deterministic, revision-specific data."""
    n = int.from_bytes(oid, 'big') * 7919 + int.from_bytes(tid, 'big')
    if size is None:
        size = 100 + n % 900
    return (b'%d/%d;' % (int.from_bytes(oid, 'big'),
                         int.from_bytes(tid, 'big')) * size)[:size]


class BlobCacheTestBase(unittest.TestCase):
    """Blob caches in a temporary directory, closed after the test."""

    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix='zeoblobcache')
        self.dir = os.path.join(self.tmp, 'blobs')
        self.caches = []
        self.fetched = []

    def tearDown(self):
        for cache in self.caches:
            cache.close()
        shutil.rmtree(self.tmp)

    def make(self, *args, **kw):
        kw.setdefault('fsync', False)
        cache = BlobCache(self.dir, *args, **kw)
        self.caches.append(cache)
        return cache

    def fetcher(self, cache, size=None):
        def fetch(oid, tid):
            self.fetched.append((oid, tid))
            with cache.begin_download(oid, tid) as f:
                f.write(content(oid, tid, size))
        return fetch

    def tmp_files(self, cache):
        return os.listdir(cache.temporary_directory())


def intact_records(path, ring_end):
    """Offsets of every complete, valid record anywhere in the ring, found
    by brute force (trying every marker), ignoring the block structure."""
    with open(path, 'rb') as f:
        data = f.read(ring_end)
    view = memoryview(data)
    found = set()
    pos = data.find(fmt.RECORD_MARKER, fmt.RING_OFFSET)
    while pos >= 0:
        if fmt.check_record(view, pos) is not None:
            found.add(pos)
        pos = data.find(fmt.RECORD_MARKER, pos + 1)
    return found


def indexed_offsets(cache):
    """The record offsets a FileCache's index holds."""
    return {off for _oid, _s, _e, off, _size in cache._index}


def parse(body, header='%import zeo.client\n'):
    """The converted storage section of ``body``."""
    schema = ZODB.config.getStorageSchema()
    config, _ = ZConfig.loadConfigFile(schema, io.StringIO(header + body))
    return config.storage


def section(*lines, ssl_lines=None, name=''):
    text = f'<clientstorage {name}>\n' + ''.join(f'  {line}\n' for line in lines)
    if ssl_lines is not None:
        text += '  <ssl>\n' + ''.join(f'    {line}\n' for line in ssl_lines)
        text += '  </ssl>\n'
    return text + '</clientstorage>\n'
