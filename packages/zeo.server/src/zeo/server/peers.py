"""Who is at the other end of a transport, and addresses as text, for
logs, limits and messages."""

from __future__ import annotations

from typing import Any

__all__ = ["describe_peer", "format_address", "peer_host"]


def format_address(address: Any) -> str:
    """``host:port`` (``[host]:port`` for IPv6), or a Unix socket's path."""
    if isinstance(address, str):
        return address
    host, port = address[:2]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def peer_host(transport: Any) -> str | None:
    """The IP address of a TCP peer (an IPv4 address also when it reaches
    an IPv6 socket); None for a Unix socket."""
    peer = transport.get_extra_info("peername") if transport is not None else None
    if isinstance(peer, tuple) and len(peer) >= 2:
        host = str(peer[0])
        return host[7:] if host.startswith("::ffff:") and "." in host else host
    return None


def describe_peer(transport: Any) -> str:
    if transport is None:
        return "unconnected"
    peer = transport.get_extra_info("peername")
    if isinstance(peer, tuple) and len(peer) >= 2:
        return format_address((str(peer[0]), peer[1]))
    return str(peer or transport.get_extra_info("sockname") or "unix socket")
