"""Kept for the modules not yet moved to `zeo.server.tests.support`, where
`ServerProcess` and `free_port` now live (import them from there)."""

from __future__ import annotations

from zeo.server.tests.support import ServerProcess, free_port, open_descriptors, rss_kib

__all__ = ["ServerProcess", "free_port", "open_descriptors", "rss_kib"]
