"""Contracts of the protocol package (zope.interface)."""
from zope.interface import Interface
