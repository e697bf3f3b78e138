"""ServedStorage: what the server keeps per storage, decided once."""

import os
import shutil
import tempfile
import unittest

from ZODB.FileStorage import FileStorage
from ZODB.MappingStorage import MappingStorage

from zeo.server.config import ServerConfig
from zeo.server.served_storage import LoopHooks, ServedStorage


def served(storage):
    hooks = LoopHooks(call_soon=lambda *args: None, call_later=lambda *args: None)
    return ServedStorage("1", storage, ServerConfig(), hooks)


class SpoolDirectoryTests(unittest.TestCase):
    """Spools and blob uploads go where an upload can be renamed into place."""

    def setUp(self):
        self.directory = tempfile.mkdtemp(prefix="zeo-served-")
        self.addCleanup(shutil.rmtree, self.directory, True)

    def test_a_blob_storage_spools_in_its_own_temporary_directory(self):
        storage = FileStorage(os.path.join(self.directory, "Data.fs"),
                              blob_dir=os.path.join(self.directory, "blobs"))
        served_storage = served(storage)
        self.addCleanup(served_storage.close)
        self.assertEqual(served_storage.spool_dir, storage.temporaryDirectory())
        self.assertTrue(served_storage.spool_dir.startswith(
            os.path.join(self.directory, "blobs")))
        self.assertEqual(os.path.normpath(served_storage.blob_dir),
                         os.path.join(self.directory, "blobs"))

    def test_other_storages_spool_in_the_system_temporary_directory(self):
        served_storage = served(MappingStorage())
        self.addCleanup(served_storage.close)
        self.assertEqual(served_storage.spool_dir, tempfile.gettempdir())
        self.assertIsNone(served_storage.blob_dir)
        file_storage = served(FileStorage(os.path.join(self.directory, "Data.fs")))
        self.addCleanup(file_storage.close)
        self.assertEqual(file_storage.spool_dir, tempfile.gettempdir())


if __name__ == "__main__":
    unittest.main()
