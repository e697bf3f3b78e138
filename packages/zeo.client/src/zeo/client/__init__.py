"""A ZEO 5/6 compatible ClientStorage for ZODB."""
