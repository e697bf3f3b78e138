"""The core pieces provide the contracts declared in zeo.server.interfaces."""
import asyncio
import tempfile
import unittest

from zope.interface.verify import verifyClass
from zope.interface.verify import verifyObject

from zeo.server.adapter import ServerProtocol
from zeo.server.budgets import Budgets
from zeo.server.commit_lock import CommitLock
from zeo.server.config import ServerConfig
from zeo.server.interfaces import IBudgetedConnection
from zeo.server.interfaces import ICommitLock
from zeo.server.interfaces import IInvalidationQueue
from zeo.server.interfaces import IServerBudgets
from zeo.server.interfaces import IIteratorRegistry
from zeo.server.interfaces import ISlowCalls
from zeo.server.interfaces import IStorageStats
from zeo.server.interfaces import ITransactionSpool
from zeo.server.invalidation_queue import InvalidationQueue
from zeo.server.iterators import IteratorRegistry
from zeo.server.slow_calls import SlowCalls
from zeo.server.spool import TransactionSpool
from zeo.server.stats import StorageStats


class InterfaceTests(unittest.TestCase):

    def test_invalidation_queue(self):
        verifyClass(IInvalidationQueue, InvalidationQueue)
        verifyObject(IInvalidationQueue, InvalidationQueue())

    def test_commit_lock(self):
        loop = asyncio.new_event_loop()
        self.addCleanup(loop.close)
        verifyClass(ICommitLock, CommitLock)
        verifyObject(ICommitLock, CommitLock(
            call_soon=loop.call_soon, clock=lambda: 0.0, timeout=1,
            call_later=loop.call_later, on_timeout=lambda owner: None))

    def test_transaction_spool(self):
        with tempfile.TemporaryDirectory() as directory:
            spool = TransactionSpool(directory)
            self.addCleanup(spool.close)
            verifyClass(ITransactionSpool, TransactionSpool)
            verifyObject(ITransactionSpool, spool)

    def test_budgets(self):
        verifyClass(IServerBudgets, Budgets)
        verifyObject(IServerBudgets, Budgets(ServerConfig()))
        verifyClass(IBudgetedConnection, ServerProtocol)

    def test_slow_calls(self):
        verifyClass(ISlowCalls, SlowCalls)
        verifyObject(ISlowCalls, SlowCalls(lambda function: None, 1))

    def test_iterator_registry(self):
        verifyClass(IIteratorRegistry, IteratorRegistry)
        verifyObject(IIteratorRegistry, IteratorRegistry(1))

    def test_storage_stats(self):
        verifyClass(IStorageStats, StorageStats)
        verifyObject(IStorageStats, StorageStats(start_time=0.0))
