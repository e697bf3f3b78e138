"""The ZEO 5/6 wire protocol, sans-IO: bytes in, events out, bytes out."""
