"""The narrative documentation of zeo.protocol, run as doctests."""

from zeo.protocol.tests.doctests import doc_suite


def test_suite():
    return doc_suite("protocol.rst")
