"""Modules whose types check without type-ignore comments stay that way.

mypy runs with ``warn_unused_ignores`` (see setup.cfg), so an ignore can't
outlive its reason; this keeps new ones out of the modules that were freed
of them (issue #21): fix the types instead (narrow, handle None, a
Protocol, or ``cast`` where a value comes from untyped code).  Add a module
here once it is free of them.
"""

from __future__ import annotations

import importlib.util
import re
import unittest
from pathlib import Path

__all__ = ["IGNORE_FREE"]

IGNORE_FREE = (
    "zeo.protocol.connection",
    "zeo.protocol.events",
    "zeo.protocol.framing",
    "zeo.protocol.zodb_errors",
    "zeo.server.adapter",
    "zeo.server.blob_uploads",
    "zeo.server.budgets",
    "zeo.server.commit_lock",
    "zeo.server.commit_sources",
    "zeo.server.load_refs",
    "zeo.server.monitor.snapshot",
    "zeo.server.relstorage_source",
    "zeo.server.session",
    "zeo.server.storage_server",
    "zeo.server.testing",
    "zeo.server.tests.faultproxy",
    "zeo.server.tests.test_layout",
    "zeo.server.tests.test_type_ignores",
    "zeo.server.tls_accept",
    "zeo.client.blobs.cache",
    "zeo.client.blobs.errors",
    "zeo.client.blobs.layout",
    "zeo.client.blobs.prune",
    "zeo.client.blobs.shared",
    "zeo.client.blobs.unsynced",
    "zeo.client.connections.channel",
    "zeo.client.connections.locks",
    "zeo.client.connections.manager",
    "zeo.client.lockfiles",
    "zeo.client.storage_blobs",
)

_IGNORE = re.compile(r"#\s*type:\s*ignore")


class TypeIgnoreTests(unittest.TestCase):

    def test_freed_modules_have_no_type_ignore(self):
        found = []
        for name in IGNORE_FREE:
            spec = importlib.util.find_spec(name)
            self.assertIsNotNone(spec, name)
            assert spec is not None and spec.origin is not None
            for number, line in enumerate(Path(spec.origin).read_text().splitlines(), 1):
                if _IGNORE.search(line):
                    found.append(f"{name}:{number}: {line.strip()}")
        self.assertEqual(found, [])
