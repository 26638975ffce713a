"""Pre-fork settings: whether the processes of a server share one scrape, where they meet, how gauges combine."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from chat_turbo_metrics._core.config.checks import holds
from chat_turbo_metrics._core.config.declaration import Settings, setting
from chat_turbo_metrics._core.config.values import parse_bool, parse_str

GAUGE_MODES = ("sum", "max", "min", "latest", "worker")


def parse_gauge_modes(raw: Any) -> dict[str, str]:
    """``sum`` (every gauge) or ``active_connections=sum,cpu_*=max,*=latest`` (per metric name pattern).

    Example:
        >>> parse_gauge_modes("cpu_*=max, latest")
        {'cpu_*': 'max', '*': 'latest'}
    """
    if isinstance(raw, str):
        items = [item.strip() for item in raw.split(",") if item.strip()]
        pairs = [item.partition("=") for item in items]
        raw = {(name.strip() if sep else "*"): (mode if sep else name).strip() for name, sep, mode in pairs}
    modes = {str(name): str(mode).strip().lower() for name, mode in dict(raw).items()}
    for name, mode in modes.items():
        if mode not in GAUGE_MODES:
            raise ValueError(f"gauge mode {mode!r} for {name!r}: expected one of {', '.join(GAUGE_MODES)}")
    return modes


@dataclass(frozen=True, kw_only=True)
class MultiprocessSettings(Settings):
    """How the processes of a pre-fork server share one ``/metrics``.

    Example:
        >>> MultiprocessSettings(multiprocess_group="chat api")
        Traceback (most recent call last):
        ...
        chat_turbo_metrics._core.config.declaration.InvalidSetting: multiprocess_group='chat api': must be up to 64 ...
    """

    SECTION = "multiprocess"
    TITLE = "pre-fork servers: one scrape for every worker"

    multiprocess: bool = setting(
        True,
        parse=parse_bool,
        variable="METRICS_MULTIPROCESS",
        meaning="`false`: each process serves only its own data (the port goes to the first)",
    )
    multiprocess_dir: str = setting(
        "",
        parse=parse_str,
        variable="METRICS_MULTIPROCESS_DIR",
        shown_default="`$TMPDIR/chat-turbo-metrics-<uid>`",
        meaning="the private base directory where the workers meet (0700; refused if another user owns it or may "
        "write to it)",
    )
    multiprocess_group: str = setting(
        "",
        parse=parse_str,
        variable="METRICS_MULTIPROCESS_GROUP",
        checks=(
            holds(
                lambda group: re.fullmatch(r"[A-Za-z0-9_-]{0,64}", group) is not None,
                "must be up to 64 letters, digits, '_' or '-'",
            ),
        ),
        shown_default="the processes of one server",
        meaning="a group name (letters, digits, `_`, `-`): processes of this user with the same name share one "
        "scrape, whoever started them",
    )
    multiprocess_gauges: Mapping[str, str] = setting(
        factory=dict,
        parse=parse_gauge_modes,
        variable="METRICS_MULTIPROCESS_GAUGES",
        checks=(
            holds(
                lambda modes: all(mode in GAUGE_MODES for mode in modes.values()),
                f"modes must be one of {', '.join(GAUGE_MODES)}",
            ),
        ),
        shown_default="`sum`",
        meaning="how gauges of several workers combine: `sum`, `max`, `min`, `latest` (most recently set), `worker` "
        "(one series per worker, label `process_pid`); per metric: `active_connections=sum,cpu_*=max,*=latest`",
    )
