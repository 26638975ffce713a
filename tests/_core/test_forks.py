"""The one fork registry: repairs run in a forked child phase by phase, in registration order within a phase, with
the locks held across the fork released last; and nothing else in ``src/`` or ``instrumentors/`` registers a fork
hook of its own (``os.register_at_fork`` runs hooks in an order nobody declared)."""

from __future__ import annotations

import ast
import json
import os
import textwrap
import threading
from collections.abc import Callable
from pathlib import Path

from chat_turbo_metrics._core import forks

ROOT = Path(__file__).resolve().parents[2]
REGISTRY = Path(forks.__file__).resolve()


class Repair:
    """Appends its name to ``log`` when repaired in a forked child."""

    def __init__(self, name: str, log: list[str]) -> None:
        self.name = name
        self.log = log

    def after_fork_in_child(self) -> None:
        self.log.append(self.name)


class Held:
    """A lock held across the fork, logging when it is taken and let go."""

    def __init__(self, name: str, log: list[str]) -> None:
        self.name = name
        self.log = log
        self.lock = threading.Lock()

    def hold_for_fork(self) -> None:
        self.lock.acquire()
        self.log.append(f"hold {self.name}")

    def release_after_fork(self) -> None:
        self.log.append(f"release {self.name}")
        self.lock.release()


def in_child(body: Callable[[], list[str]]) -> list[str]:
    """Fork; return what ``body`` returns in the child (sent back over a pipe)."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report and leave without running the parent's exit hooks
        try:
            os.write(write, json.dumps(body()).encode())
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read) as answer:
        text = answer.read()
    os.waitpid(pid, 0)
    return list(json.loads(text))


def test_repairs_run_phase_by_phase_then_in_registration_order() -> None:
    log: list[str] = []
    kept = [
        Repair("threads", log),
        Repair("sessions", log),
        Repair("pipeline 1", log),
        Repair("locks", log),
        Repair("pipeline 2", log),
    ]
    phases = [forks.Phase.THREADS, forks.Phase.SESSIONS, forks.Phase.PIPELINE, forks.Phase.LOCKS]
    for repair, phase in zip(kept, [*phases, forks.Phase.PIPELINE], strict=True):
        forks.register(repair, phase)
    forks.register_function(lambda: log.append("pipeline function"), forks.Phase.PIPELINE)

    seen = in_child(lambda: [entry for entry in log if entry in {r.name for r in kept} | {"pipeline function"}])

    assert seen == ["locks", "pipeline 1", "pipeline 2", "pipeline function", "sessions", "threads"]
    assert log == []  # nothing ran in the parent


def test_locks_held_across_the_fork_are_released_after_every_repair_and_in_the_parent() -> None:
    log: list[str] = []
    outer, inner = Held("outer", log), Held("inner", log)
    forks.hold(outer)
    forks.hold(inner)
    repair = Repair("threads repaired", log)
    forks.register(repair, forks.Phase.THREADS)

    seen = in_child(lambda: [entry for entry in log if "outer" in entry or "inner" in entry or "repaired" in entry])

    expected_parent = ["hold outer", "hold inner", "release inner", "release outer"]
    assert [entry for entry in log if "outer" in entry or "inner" in entry] == expected_parent
    assert seen == ["hold outer", "hold inner", "threads repaired", "release inner", "release outer"]
    assert not outer.lock.locked()
    assert not inner.lock.locked()


def test_a_repair_that_fails_does_not_stop_the_others() -> None:
    log: list[str] = []

    class Broken:
        def after_fork_in_child(self) -> None:
            raise RuntimeError("broken repair")

    broken, after = Broken(), Repair("after the broken one", log)
    forks.register(broken, forks.Phase.LOCKS)
    forks.register(after, forks.Phase.LOCKS)

    assert "after the broken one" in in_child(lambda: list(log))


def test_objects_are_held_weakly() -> None:
    log: list[str] = []
    gone = Repair("gone", log)
    forks.register(gone, forks.Phase.LOCKS)
    del gone

    assert "gone" not in in_child(lambda: list(log))


def test_outside_fork_runs_the_call_and_a_fork_waits_for_it() -> None:
    started, finish = threading.Event(), threading.Event()
    order: list[str] = []

    def collect() -> str:
        started.set()
        finish.wait(5)
        order.append("collected")
        return "data"

    thread = threading.Thread(target=lambda: order.append(forks.outside_fork(collect)))
    thread.start()
    started.wait(5)
    threading.Timer(0.2, finish.set).start()
    in_child(lambda: [])  # the fork waits (up to 1 s) for the collection in flight
    order.append("forked")
    thread.join(5)
    assert order.index("collected") < order.index("forked")


# --- no fork hook outside the registry ---------------------------------------------------------------


def fork_hooks(source: str, name: str = "<source>") -> list[str]:
    """Every place ``source`` reaches for ``os.register_at_fork``, as ``name:line``."""
    found = []
    for node in ast.walk(ast.parse(source, name)):
        reaches = (
            (isinstance(node, ast.Attribute) and node.attr == "register_at_fork")
            or (isinstance(node, ast.Name) and node.id == "register_at_fork")
            or (isinstance(node, ast.alias) and node.name == "register_at_fork")
            or (isinstance(node, ast.Constant) and node.value == "register_at_fork")
        )
        if reaches:
            found.append(f"{name}:{getattr(node, 'lineno', 0)}")
    return found


def test_no_module_but_the_registry_registers_a_fork_hook() -> None:
    sources = [*sorted((ROOT / "src").rglob("*.py")), *sorted((ROOT / "instrumentors").glob("*/src/**/*.py"))]
    assert len(sources) > 100
    offenders = [
        hook
        for path in sources
        if path.resolve() != REGISTRY
        for hook in fork_hooks(path.read_text(encoding="utf-8"), str(path.relative_to(ROOT)))
    ]
    assert offenders == []


def test_the_scan_sees_every_way_of_registering_a_fork_hook() -> None:
    source = textwrap.dedent(
        """\
        import os
        from os import register_at_fork as hook
        os.register_at_fork(after_in_child=print)
        if hasattr(os, "register_at_fork"):
            pass
        def later():
            getattr(os, "register_at_fork")(before=print)
        """
    )
    assert fork_hooks(source) == ["<source>:2", "<source>:3", "<source>:4", "<source>:7"]
    assert fork_hooks("import os\nos.fork\nregistered = 'at fork'\n") == []
    assert fork_hooks(REGISTRY.read_text()) != []  # the registry itself is seen, so the exemption is needed
