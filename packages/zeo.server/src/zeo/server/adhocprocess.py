"""``zeo.server.server(threaded=False)``: the server in a child process.

The parent runs ``python -m zeo.server.adhocprocess`` and writes the
pickled arguments of ``server()`` to its standard input. The child starts
the server in a thread of its own (the ordinary ``server()``), writes one
JSON line to its standard output (``{"address": ...}`` or ``{"error":
...}``) and then reads its standard input until the end: when the parent
calls ``stop`` or exits, the pipe closes and the child stops the server and
exits, so no server outlives the program that started it. The child ignores
SIGINT: a Ctrl-C in a terminal is the parent's to handle.
"""

from __future__ import annotations

import json
import os
import pickle
import select
import signal
import subprocess
import sys
import time
from typing import Any, Callable

from zeo.server.config import Address

__all__ = ["main", "start_process"]


def start_process(arguments: dict[str, Any],
                  timeout: float) -> tuple[Address, Callable[..., None]]:
    """Run a server with ``server(**arguments)`` in a child process."""
    try:
        spec = pickle.dumps(arguments)
    except Exception as error:
        raise TypeError(f"threaded=False needs picklable arguments (an ssl context is"
                        f" not: use an <ssl> section in zeo_conf): {error}") from None
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    process = subprocess.Popen([sys.executable, "-m", "zeo.server.adhocprocess"],
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env)
    assert process.stdin is not None and process.stdout is not None
    stdin, stdout = process.stdin, process.stdout

    def stop(stop_timeout: float = timeout) -> None:
        if not stdin.closed:
            stdin.close()   # the child's cue to stop
        try:
            process.wait(stop_timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        stdout.close()

    try:
        stdin.write(spec)
        stdin.flush()
        answer = _read_line(stdout, timeout)
    except BaseException:
        process.kill()
        stop()
        raise
    if "address" not in answer:
        stop()
        raise RuntimeError(f"the server process did not start: {answer.get('error')}")
    address = answer["address"]
    return (address if isinstance(address, str) else tuple(address)), stop


def _read_line(stream: Any, timeout: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    data = b""
    while not data.endswith(b"\n"):
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([stream], [], [], left)[0]:
            raise RuntimeError(f"the server process did not start within {timeout} seconds")
        chunk = os.read(stream.fileno(), 4096)
        if not chunk:
            return {"error": "it exited (its standard error says why)"}
        data += chunk
    return json.loads(data)


def main() -> int:
    """The child: serve until standard input ends."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    from zeo.server.adhoc import server
    arguments = pickle.load(sys.stdin.buffer)
    try:
        address, stop = server(**arguments)
    except Exception as error:
        print(json.dumps({"error": f"{type(error).__name__}: {error}"}), flush=True)
        return 1
    print(json.dumps({"address": address}), flush=True)
    try:
        while sys.stdin.buffer.read(4096):
            pass
    finally:
        stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
