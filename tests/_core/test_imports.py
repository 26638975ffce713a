"""when_imported(): a patch waits for its module's import, runs once, and never raises into the import."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

from chat_turbo_metrics.instrumentation import when_imported


def _run(code: str) -> str:
    """``code`` in a fresh interpreter (whose imports are its own); its standard output."""
    return _run_both(code)[0]


def _run_both(code: str) -> tuple[str, str]:
    command = [sys.executable, "-c", textwrap.dedent(code)]
    done = subprocess.run(command, check=False, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout, done.stderr


def test_the_patch_waits_for_the_import_and_the_undo_restores_it() -> None:
    out = _run(
        """
        import sys
        from chat_turbo_metrics.instrumentation import when_imported

        def patch(module):
            original = module.rgb_to_hsv
            module.rgb_to_hsv = lambda *args: "patched"
            return lambda: setattr(module, "rgb_to_hsv", original)

        undo = when_imported("colorsys", patch)
        print("colorsys" in sys.modules)
        import colorsys
        print(colorsys.rgb_to_hsv(0, 0, 0))
        undo()
        print(colorsys.rgb_to_hsv(0, 0, 0))
        """
    )
    assert out.split("\n")[:3] == ["False", "patched", "(0.0, 0.0, 0)"]


def test_an_undo_before_the_import_cancels_the_patch() -> None:
    out = _run(
        """
        from chat_turbo_metrics.instrumentation import when_imported

        calls = []
        when_imported("colorsys", calls.append)()
        again = when_imported("colorsys", lambda module: calls.append("second"))
        import colorsys
        again()
        print(calls)
        """
    )
    assert out.strip() == "['second']"


def test_a_module_already_imported_is_patched_at_once_and_only_once() -> None:
    calls: list[str] = []
    undo = when_imported("json", lambda module: calls.append(module.__name__) or (lambda: calls.append("undone")))
    assert calls == ["json"]
    import importlib

    importlib.reload(sys.modules["json"])  # a reload is not a second first import
    undo()
    undo()
    assert calls == ["json", "undone"]


def test_a_failing_patch_is_logged_once_and_the_import_still_works() -> None:
    out, err = _run_both(
        """
        import logging
        from chat_turbo_metrics.instrumentation import when_imported

        logging.basicConfig(level=logging.WARNING, format="%(name)s %(levelname)s")

        def broken(module):
            raise AttributeError("no such function in this version")

        when_imported("colorsys", broken)
        import colorsys
        print(colorsys.rgb_to_hsv(0, 0, 0))
        when_imported("colorsys", broken)  # already imported: at once, and not logged a second time
        """
    )
    assert out.strip() == "(0.0, 0.0, 0)"
    assert err.splitlines() == ["chat_turbo_metrics.instrumentation WARNING"]


def test_a_module_another_thread_is_still_importing_is_patched_once_its_import_is_done(tmp_path: Path) -> None:
    (tmp_path / "slow_library.py").write_text(
        "import time\ntime.sleep(0.5)  # the thread's import is half-way here when the patch is asked for\n"
        "def call():\n    return 'original'\n"
    )
    out = _run(
        f"""
        import sys, threading, time
        sys.path.insert(0, {str(tmp_path)!r})
        from chat_turbo_metrics.instrumentation import when_imported

        importer = threading.Thread(target=__import__, args=("slow_library",))
        importer.start()
        while "slow_library" not in sys.modules:
            time.sleep(0.01)

        def patch(module):
            module.call = lambda: "patched"

        when_imported("slow_library", patch)
        importer.join()
        print(sys.modules["slow_library"].call())
        """
    )
    assert out.strip() == "patched"


def test_an_import_that_fails_in_another_thread_does_not_fail_the_patch_request(tmp_path: Path) -> None:
    (tmp_path / "broken_library.py").write_text(
        "import time\ntime.sleep(0.5)\nraise RuntimeError('this version does not import')\n"
    )
    out = _run(
        f"""
        import sys, threading, time
        sys.path.insert(0, {str(tmp_path)!r})
        from chat_turbo_metrics.instrumentation import when_imported

        def import_it():
            try:
                import broken_library
            except RuntimeError:
                pass

        importer = threading.Thread(target=import_it)
        importer.start()
        while "broken_library" not in sys.modules:
            time.sleep(0.01)
        calls = []
        undo = when_imported("broken_library", calls.append)
        importer.join()
        print(calls, "broken_library" in sys.modules)
        undo()
        """
    )
    assert out.strip() == "[] False"
