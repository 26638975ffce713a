"""Where ``doctor`` finds a service's metrics, and what their self-telemetry says about its health.

The running service's ``/metrics`` answers best; when nothing serves it (a push-only service, a service that
is down), the metrics the service stored are read instead: the newest points of the JSON Lines file, or the
series of the history database. Either way each metric comes with its type, its series and its tag keys, and
the ``chat_turbo_metrics_*`` self-telemetry series with their values, from which :func:`health` and
:func:`health_advice` draw exports that fail, measurements dropped, overflowing metrics and full queues.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from chat_turbo_metrics._core.config import MonitoringConfig, history_url
from chat_turbo_metrics._core.secret import Secret
from chat_turbo_metrics._pipeline.health import DROPPED, EXPORTS, OVERFLOW, PREFIX, QUEUE_DEPTH, SERIES

_LABEL_VALUE = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')
_UNESCAPE = {"\\\\": "\\", '\\"': '"', "\\n": "\n"}
NOTIFICATIONS = ("alert_notifications_total", "alert_notifications")  # Prometheus and OpenTelemetry names
_MAX_FILE_RECORDS = 500_000  # a rotated-away file is at most file_max_bytes; this bounds a huge one too


def label_values(labels: str) -> dict[str, str]:
    """``{key: value}`` of a Prometheus sample's label text (escapes undone).

    Example:
        >>> label_values('exporter="otlp",outcome="failure"')
        {'exporter': 'otlp', 'outcome': 'failure'}
    """
    return {
        key: re.sub(r"\\[\\\"n]", lambda m: _UNESCAPE[m.group(0)], value) for key, value in _LABEL_VALUE.findall(labels)
    }


def sample_value(line: str) -> float | None:
    """The value of a Prometheus sample line, or None when it has none that parses."""
    try:
        return float(line.rsplit(" ", 1)[1])
    except (IndexError, ValueError):
        return None


def stored_metrics(config: MonitoringConfig) -> dict[str, Any] | None:
    """The metrics the service last stored, from the file or the database exporter; None if neither has any.

    Returns:
        ``{"source": "file" | "database", "where": path or masked URL, "metrics": {name: family}}`` where a
        family is ``{"type", "series", "tags"}`` plus ``"samples"`` (``[labels, value]``) for self-telemetry.
    """
    if "chat_turbo_file" in config.metrics_exporters:
        path = Path(config.file_path).absolute()
        if path.is_file():
            return {"source": "file", "where": str(path), "metrics": _file_families(path)}
    if "chat_turbo_database" in config.metrics_exporters:
        try:
            return _database_metrics(history_url(config))
        except Exception:  # the endpoint check reports an unreachable database; its message may hold the URL
            return None
    return None


def _file_families(path: Path) -> dict[str, dict[str, Any]]:
    from chat_turbo_metrics.exporters.file import read_metric_records

    latest: dict[tuple[str, str, str], dict[str, Any]] = {}  # (name, attributes, process) -> newest record
    for index, record in enumerate(read_metric_records(path)):
        if index >= _MAX_FILE_RECORDS:
            break
        process = str((record.get("resource") or {}).get("service.instance.id", ""))
        key = (str(record.get("name")), json.dumps(record.get("attributes") or {}, sort_keys=True), process)
        latest[key] = record
    return _families(
        (name, record.get("kind", "gauge"), record.get("attributes") or {}, record.get("value", record.get("count")))
        for (name, _, _), record in latest.items()
    )


def bounded_connect_args(url: Any, timeout_s: float) -> dict[str, Any]:
    """Driver arguments that bound connecting to (and, where the driver can, querying) the database at ``url``.

    Example:
        >>> from sqlalchemy.engine import make_url
        >>> bounded_connect_args(make_url("postgresql+psycopg://db/metrics"), 3.0)
        {'connect_timeout': 3, 'options': '-c statement_timeout=3000'}
    """
    backend, seconds = url.get_backend_name(), max(1, int(timeout_s))
    if backend == "postgresql" and url.get_driver_name() in ("psycopg", "psycopg2"):
        return {"connect_timeout": seconds, "options": f"-c statement_timeout={seconds * 1000}"}
    if backend == "postgresql" and url.get_driver_name() == "pg8000":
        return {"timeout": seconds}
    if backend in ("mysql", "mariadb"):
        return {"connect_timeout": seconds, "read_timeout": seconds, "write_timeout": seconds}
    if backend == "sqlite":
        return {"timeout": timeout_s}  # waiting for another writer's lock
    return {}  # other drivers: the caller's deadline bounds them


def _database_metrics(secret: Secret) -> dict[str, Any]:
    from sqlalchemy import create_engine, make_url, select

    from chat_turbo_metrics._cli.doctor_endpoints import TIMEOUT_S
    from chat_turbo_metrics.exporters._database_query import read_only_url
    from chat_turbo_metrics.exporters._database_schema import streams

    url = make_url(secret.reveal())
    # Read-only: a missing SQLite file stays missing.
    engine = create_engine(read_only_url(url), connect_args=bounded_connect_args(url, TIMEOUT_S))
    try:
        with engine.connect() as conn:
            rows = conn.execute(select(streams.c.name, streams.c.kind, streams.c.attributes)).all()
    finally:
        engine.dispose()
    # The history keeps series, not values a doctor should trust as current: no samples from here.
    families = _families((name, kind, json.loads(attributes or "{}"), None) for name, kind, attributes in rows)
    return {"source": "database", "where": secret.masked(), "metrics": families}


def _families(points: Iterable[tuple[str, str, dict[str, Any], Any]]) -> dict[str, dict[str, Any]]:
    families: dict[str, dict[str, Any]] = {}
    seen: dict[str, set[str]] = {}
    for name, kind, attributes, value in points:
        family = families.setdefault(name, {"type": kind, "series": 0, "tags": set()})
        key = json.dumps(attributes, sort_keys=True, default=str)
        if key not in seen.setdefault(name, set()):
            seen[name].add(key)
            family["series"] += 1
        family["tags"] |= set(attributes)
        if keeps_values(name) and value is not None:
            family.setdefault("samples", []).append([{k: str(v) for k, v in attributes.items()}, value])
    return {name: {**family, "tags": sorted(family["tags"])} for name, family in sorted(families.items())}


def keeps_values(family: str) -> bool:
    """Whether the doctor keeps a family's sample values (the self-telemetry and notification outcomes)."""
    return family.startswith(PREFIX) or family in NOTIFICATIONS


def health(families: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The self-telemetry in ``families``, summed over processes: exports per exporter and outcome, dropped
    per cause, overflow per metric, queue depths and series per metric (empty when it was switched off), and
    alert notifications per notifier and outcome."""
    found: dict[str, dict[str, Any]] = {"exports": {}, "dropped": {}, "overflow": {}, "queues": {}, "series": {}}
    found["notifications"] = {}
    outcomes = [(EXPORTS, "exports", "exporter"), *((name, "notifications", "notifier") for name in NOTIFICATIONS)]
    for family, section, owner in outcomes:
        for labels, value in families.get(family, {}).get("samples", ()):
            row = found[section].setdefault(labels.get(owner, "?"), {})
            row[labels.get("outcome", "?")] = row.get(labels.get("outcome", "?"), 0) + value
    tables: tuple[tuple[str, str, tuple[str, ...]], ...] = (
        (DROPPED, "dropped", ("cause", "exporter")),
        (OVERFLOW, "overflow", ("metric",)),
        (QUEUE_DEPTH, "queues", ("queue", "owner")),
        (SERIES, "series", ("metric",)),
    )
    for name, section, keys in tables:
        for labels, value in families.get(name, {}).get("samples", ()):
            key = "/".join(labels[k] for k in keys if labels.get(k))
            found[section][key] = found[section].get(key, 0) + value
    return found


def health_advice(found: dict[str, Any], endpoints: dict[str, dict[str, Any]], limit: int) -> list[str]:
    """Concrete steps for what the self-telemetry shows."""
    tips = []
    for metric, count in sorted(found["overflow"].items()):
        held = found["series"].get(metric)
        tips.append(
            f"High memory / missing series: {metric} passed its cardinality limit"
            + (f" ({int(held)} series held, the overflow series included)" if held else "")
            + f"; {int(count)} measurements went to its otel_metric_overflow series. Drop the high-cardinality "
            f"tag with a View (attribute_keys), use route templates, raise METRICS_CARDINALITY_LIMIT ({limit} "
            "in this environment), or, when tag values churn, free idle series with METRICS_SERIES_IDLE_TIMEOUT."
        )
    for exporter, row in sorted(found["exports"].items()):
        failed, timed_out = int(row.get("failure", 0)), int(row.get("timeout", 0))
        if failed or timed_out:
            where = _endpoint_of(exporter, endpoints)
            tips.append(
                f"Missing metrics: exporter {exporter}{where} failed {failed} and timed out {timed_out} of "
                f"{failed + timed_out + int(row.get('success', 0))} exports; check that its endpoint is up "
                "(OTEL_METRIC_EXPORT_TIMEOUT bounds each export)."
            )
    for notifier, row in sorted(found["notifications"].items()):
        sent, dropped = int(row.get("sent", 0)), int(row.get("dropped", 0))
        if sent or dropped:
            tips.append(
                f"Alert spam: notifier {notifier} sent {sent} notifications and dropped {dropped} (its queue was "
                "full) since the service started; if that is too many, give noisy rules a duration, widen "
                "group_interval_s and repeat_interval_s, group more broadly (group_by), and silence during "
                "maintenance."
            )
    for cause, count in sorted(found["dropped"].items()):
        tips.append(
            f"Missing metrics: {int(count)} measurements or points dropped as {cause}; the warning log names "
            "the metric and the bad value once per cause."
        )
    return tips


_ENDPOINT_OF = {"otlp": "otlp", "chat_turbo_database": "database", "chat_turbo_file": "file", "datadog": "datadog"}


def _endpoint_of(exporter: str, endpoints: dict[str, dict[str, Any]]) -> str:
    lowered = exporter.lower()
    check = next((v for k, v in _ENDPOINT_OF.items() if lowered.startswith(k)), None)
    found = endpoints.get(check or "", {})
    where = found.get("endpoint") or found.get("url") or found.get("path")
    return f" ({where})" if where else ""
