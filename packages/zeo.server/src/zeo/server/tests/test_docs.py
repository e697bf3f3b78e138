"""The narrative documentation of zeo.server, run as doctests."""

from zeo.protocol.tests.doctests import doc_suite


def test_suite():
    return doc_suite("server.rst")
