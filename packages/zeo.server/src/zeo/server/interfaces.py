"""Contracts of the server package (zope.interface)."""
from zope.interface import Interface
