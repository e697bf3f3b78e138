"""A storage's own error classes reach clients as ZODB's (client_errors)."""

import unittest

import transaction
import transaction.interfaces
import ZODB.POSException
from ZODB.MappingStorage import MappingStorage

import zeo.client
import zeo.server
from zeo.server.client_errors import exception_for_clients


class StoragePOSKeyError(ZODB.POSException.POSKeyError):
    """As RelStorage's relstorage.interfaces.POSKeyError."""


class StorageTransientError(ZODB.POSException.StorageError,
                            transaction.interfaces.TransientError):
    """As RelStorage's CacheConsistencyError."""


class OwnErrorsStorage(MappingStorage):
    """A MappingStorage that raises its own POSKeyError subclass."""

    def loadBefore(self, oid, tid):
        try:
            return super().loadBefore(oid, tid)
        except ZODB.POSException.POSKeyError:
            raise StoragePOSKeyError(oid) from None


class ExceptionForClientsTests(unittest.TestCase):

    def test_known_classes_pass_unchanged(self):
        error = ZODB.POSException.POSKeyError(b"\0" * 8)
        self.assertIs(exception_for_clients(error), error)
        error = ValueError("x")
        self.assertIs(exception_for_clients(error), error)

    def test_a_storage_subclass_becomes_its_zodb_base_with_its_state(self):
        error = StoragePOSKeyError(b"\0" * 8)
        error.extra = "kept"
        known = exception_for_clients(error)
        self.assertIs(type(known), ZODB.POSException.POSKeyError)
        self.assertEqual(known.args, (b"\0" * 8,))
        self.assertEqual(known.extra, "kept")

    def test_a_transient_error_becomes_a_conflict_error(self):
        known = exception_for_clients(StorageTransientError("cache moved"))
        self.assertIs(type(known), ZODB.POSException.ConflictError)
        self.assertIsInstance(known, transaction.interfaces.TransientError)
        self.assertIn("StorageTransientError", str(known))
        self.assertIn("cache moved", str(known))

    def test_relstorages_commit_lock_timeout_is_retried(self):
        # A StorageError in RelStorage's hierarchy, but transient in nature:
        # another front held the database's commit lock too long.
        from relstorage.adapters.interfaces import UnableToAcquireCommitLockError
        error = exception_for_clients(UnableToAcquireCommitLockError("timed out"))
        self.assertIs(type(error), ZODB.POSException.ConflictError)
        self.assertIn("UnableToAcquireCommitLockError", str(error))
        self.assertIn("timed out", str(error))

    def test_other_errors_are_left_alone(self):
        class Odd(Exception):
            pass
        error = Odd()
        self.assertIs(exception_for_clients(error), error)


class OverTheWireTests(unittest.TestCase):

    def test_a_new_database_gets_its_root(self):
        # With the storage's own POSKeyError the client got a RemoteError
        # and ZODB could not create the root of a new database.
        address, stop = zeo.server.server(storages={"1": OwnErrorsStorage()})
        self.addCleanup(stop)
        db = zeo.client.DB(address)
        self.addCleanup(db.close)
        with db.transaction() as connection:
            connection.root()["answer"] = 42
        with db.transaction() as connection:
            self.assertEqual(connection.root()["answer"], 42)
        with self.assertRaises(ZODB.POSException.POSKeyError):
            db.storage.load(b"\0" * 7 + b"\7")


if __name__ == "__main__":
    unittest.main()
