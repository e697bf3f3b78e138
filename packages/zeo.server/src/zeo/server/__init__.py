"""A ZEO 5/6 compatible storage server for ZODB."""
