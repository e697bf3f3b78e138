"""The narrative documentation of zeo.client, run as doctests."""

from zeo.protocol.tests.doctests import doc_suite


def test_suite():
    return doc_suite("client.rst")
