"""Running a piece of a test in a forked child of the test process."""

from __future__ import annotations

import json
import os
from collections.abc import Callable


def in_fork(work: Callable[[], object]) -> object:
    """Run ``work`` in a forked child; what it returns (JSON) comes back through a pipe."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            os.close(read_end)
            os.write(write_end, json.dumps(work()).encode())
            code = 0
        finally:
            os._exit(code)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        body = pipe.read()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, body
    return json.loads(body)
