"""Stacks of the server's threads and event-loop tasks, for when it seems stuck.

`thread_stacks` reads every thread's current frame (``sys._current_frames``,
a copy taken under the interpreter's lock) and formats it; it changes
nothing. `task_stacks` lists the tasks of the running loop, so it is
called on the loop. Stacks are cut to `MAX_FRAMES` innermost frames.
"""

from __future__ import annotations

import asyncio
import io
import sys
import threading
import traceback
from typing import Any

__all__ = ["MAX_FRAMES", "task_stacks", "thread_stacks"]

#: Frames shown per stack (the innermost).
MAX_FRAMES = 40


def thread_stacks() -> list[dict[str, Any]]:
    """Each thread: name, ident, daemon, and its stack (text), the
    current thread first."""
    frames = sys._current_frames()
    threads = {thread.ident: thread for thread in threading.enumerate()}
    current = threading.get_ident()
    result = []
    for ident, frame in frames.items():
        thread = threads.get(ident)
        stack = traceback.format_list(traceback.extract_stack(frame)[-MAX_FRAMES:])
        result.append({
            "name": thread.name if thread is not None else f"thread {ident}",
            "ident": ident,
            "daemon": thread.daemon if thread is not None else None,
            "current": ident == current,
            "stack": "".join(stack),
        })
    del frames
    result.sort(key=lambda t: (not t["current"], t["name"]))
    return result


def task_stacks() -> list[dict[str, Any]]:
    """Each task of the running event loop: name, coroutine, state and stack."""
    try:
        tasks = asyncio.all_tasks()
    except RuntimeError:   # no running loop
        return []
    result = []
    for task in tasks:
        out = io.StringIO()
        try:
            task.print_stack(limit=MAX_FRAMES, file=out)
        except Exception as error:  # a stack must never break the page
            out.write(f"(no stack: {error!r:.200})\n")
        coro = task.get_coro()
        result.append({
            "name": task.get_name(),
            "coroutine": getattr(coro, "__qualname__", repr(coro)),
            "done": task.done(),
            "stack": out.getvalue(),
        })
    result.sort(key=lambda t: t["name"])
    return result
