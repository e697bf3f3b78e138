"""The client's blob cache: downloaded and committed blob files on disk.

- `zeo.client.blobs.cache`: `BlobCache`, what `ClientStorage` uses;
- `zeo.client.blobs.layout`: the ``zeocache`` directory layout;
- `zeo.client.lockfiles`: lock files, exclusive between threads and processes;
- `zeo.client.blobs.prune`: pruning a directory down to a target size;
- `zeo.client.blobs.unsynced`: files that survive a crash without an fsync each;
- `zeo.client.blobs.shared`: shared-blob-dir mode (the server's own directory);
- `zeo.client.blobs.errors`: the exceptions.

The blob half of `ClientStorage` itself is `zeo.client.storage_blobs`.
"""

__all__: list[str] = []
