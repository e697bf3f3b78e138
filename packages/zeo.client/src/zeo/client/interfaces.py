"""Contracts of the client package (zope.interface)."""
from zope.interface import Interface
