"""SIGTERM still ends the process, but only after the push exporters had their final export.

Python's default for SIGTERM ends the process at once: no ``atexit`` hook runs, so whatever was recorded since
the last periodic export never leaves the process (a plain script, a queue worker, a container's PID 1). Servers
such as uvicorn and gunicorn install their own handler and exit normally, which runs the pipeline's ``atexit``
shutdown; nothing here changes that.

When a pipeline gets its first push exporter, and SIGTERM still has the default disposition, and this is the
main thread, a handler is installed. On SIGTERM it puts the default disposition back (so a second SIGTERM ends
the process at once), shuts every registered pipeline down on a helper thread, bounded by each pipeline's
shutdown timeout, then sends itself SIGTERM again: the process ends "killed by SIGTERM", as its parent expects.
The flush runs on its own thread, not in the handler, because the handler runs on the main thread between two
bytecodes, possibly inside a recording call that holds a lock the collection needs.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import weakref
from types import FrameType
from typing import Protocol

from chat_turbo_metrics._core import forks

_logger = logging.getLogger("chat_turbo_metrics.pipeline")


class _Stoppable(Protocol):
    def shutdown(self, timeout_s: float | None = None) -> None: ...


_pipelines: weakref.WeakSet[_Stoppable] = weakref.WeakSet()
_lock = threading.Lock()


def flush_on_sigterm(pipeline: _Stoppable) -> None:
    """Shut ``pipeline`` down before the process ends on SIGTERM (when nobody else handles SIGTERM)."""
    with _lock:
        _pipelines.add(pipeline)
    _install()


def _handler_installed() -> bool:
    return signal.getsignal(signal.SIGTERM) is _on_sigterm


def _install() -> None:
    if threading.current_thread() is not threading.main_thread() or _handler_installed():
        return  # signal.signal() works only on the main thread; another thread's pipeline relies on atexit
    try:
        if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:  # the application's own handler wins
            signal.signal(signal.SIGTERM, _on_sigterm)
    except (ValueError, OSError):  # a sub-interpreter, or a platform without it
        return


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    threading.Thread(target=_flush_then_terminate, name="chat-turbo-metrics-sigterm", daemon=True).start()


def _flush_then_terminate() -> None:
    with _lock:
        pipelines = list(_pipelines)
    for pipeline in pipelines:
        try:
            pipeline.shutdown()
        except Exception:
            _logger.exception("shutting the metrics pipeline down on SIGTERM failed")
    os.kill(os.getpid(), signal.SIGTERM)  # the default disposition now: the process ends as it would have


def _after_fork_in_child() -> None:
    forks.reinit(_lock)  # the parent's flush thread may have held it; it does not exist here


forks.register_function(_after_fork_in_child, forks.Phase.LOCKS)
