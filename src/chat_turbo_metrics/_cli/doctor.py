"""``chat-turbo-metrics doctor``: the seed's troubleshooting questions, answered from this environment.

Is monitoring enabled; which exporters and instrumentors are active; can each endpoint be reached (the
Prometheus port, the OTLP collector, the database, the metrics file); which metrics exist with which tags
(from the running service's ``/metrics`` when it answers); the effective configuration with secrets masked;
and advice for high memory, missing metrics and alert spam drawn from what was found. Every check is a
function of the configuration and an environment mapping, so tests inject both.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
from collections.abc import Mapping
from importlib.metadata import entry_points
from typing import Any

from chat_turbo_metrics._cli.doctor_endpoints import CHECKS, DEADLINE_S, run_bounded
from chat_turbo_metrics._cli.doctor_sources import health, health_advice, stored_metrics
from chat_turbo_metrics._core.config import MonitoringConfig, ViewConfig, get_monitoring_config
from chat_turbo_metrics._core.secret import Secret

HIGH_CARDINALITY = 500  # series of one metric worth a look


def instrumentors(env: Mapping[str, str]) -> dict[str, str]:
    """Installed OpenTelemetry instrumentors and whether ``OTEL_PYTHON_DISABLED_INSTRUMENTATIONS`` disables them."""
    disabled = {n.strip() for n in env.get("OTEL_PYTHON_DISABLED_INSTRUMENTATIONS", "").split(",") if n.strip()}
    found = {ep.name for ep in entry_points(group="opentelemetry_instrumentor")}
    return {name: "disabled" if name in disabled or "all" in disabled else "active" for name in sorted(found)}


def _masked_config(config: MonitoringConfig) -> dict[str, Any]:
    shown: dict[str, Any] = {}
    for field in dataclasses.fields(config):
        value = getattr(config, field.name)
        if isinstance(value, Secret):
            value = value.masked()
        elif isinstance(value, Mapping):
            value = dict(value)
        elif isinstance(value, tuple):
            value = [dataclasses.asdict(v) if isinstance(v, ViewConfig) else v for v in value]
        shown[field.name] = value
    return shown


def advice(report: dict[str, Any]) -> list[str]:
    """Concrete next steps for what the report shows."""
    tips: list[str] = []
    config = report["config"]
    prometheus = report["endpoints"]["prometheus"]
    if not config["enabled"]:
        tips.append("Monitoring is disabled (PERFORMANCE_MONITORING_ENABLED=false or OTEL_SDK_DISABLED=true).")
    if not config["metrics_exporters"]:
        tips.append("No metrics exporter is configured: set OTEL_METRICS_EXPORTER (prometheus, otlp, ...).")
    if prometheus.get("enabled") and prometheus.get("port") == "free":
        tips.append(
            f"Nothing serves {prometheus['url']}: start the service, or check OTEL_EXPORTER_PROMETHEUS_HOST/PORT."
        )
    if prometheus.get("port") == "held" and "metrics" not in prometheus:
        tips.append(f"Port of {prometheus['url']} is held by something that does not serve /metrics.")
    for name in ("otlp", "database", "datadog"):
        found = report["endpoints"][name]
        if found.get("enabled") and not found.get("reachable"):
            where = found.get("endpoint") or found.get("url")
            tips.append(f"The {name} endpoint {where} cannot be reached; its data is dropped and counted until it can.")
    if report["endpoints"]["file"].get("enabled") and not report["endpoints"]["file"].get("writable"):
        tips.append(f"The metrics file {report['endpoints']['file']['path']} cannot be written (METRICS_FILE_PATH).")
    listed = report["metrics"]
    if listed["source"] is None and config["enabled"]:
        tips.append(
            "Missing metrics: no metrics could be listed (nothing serves /metrics and no file or database "
            "history was found); start the service, or add chat_turbo_file to OTEL_METRICS_EXPORTER to keep them."
        )
    for name, family in listed.get("metrics", {}).items():
        overflowing = "otel_metric_overflow" in family["tags"] and not report["health"]["overflow"]
        if family["series"] >= HIGH_CARDINALITY or overflowing:  # with self-telemetry, overflow is advised below
            tips.append(
                f"High memory: {name} has {family['series']} series (tags {', '.join(family['tags'])}); "
                "drop high-cardinality tags with a View (attribute_keys), use route templates, lower "
                "METRICS_CARDINALITY_LIMIT, or let series nobody records leave memory with "
                "METRICS_SERIES_IDLE_TIMEOUT."
            )
    tips.extend(health_advice(report["health"], report["endpoints"], config["cardinality_limit"]))
    tips.append(
        "Missing metrics: counters appear as <name>_total, timers as <name>_duration_seconds; names the "
        "warning log calls invalid are dropped."
    )
    tips.append("Alert spam: give rules a `for` duration, group notifications, and silence during maintenance.")
    return tips


def _listed_metrics(config: MonitoringConfig, prometheus: dict[str, Any], deadline_s: float) -> dict[str, Any]:
    """The service's metrics: from its /metrics, else from what it stored, else none (``source`` None)."""
    if "metrics" in prometheus:
        return {"source": "prometheus", "where": prometheus["url"], "metrics": prometheus["metrics"]}
    stored = run_bounded({"stored": lambda: stored_metrics(config)}, deadline_s)["stored"]
    return stored or {"source": None, "where": None, "metrics": {}}


def _checked_endpoints(config: MonitoringConfig, env: Mapping[str, str], deadline_s: float) -> dict[str, Any]:
    """Every endpoint check, side by side; one that has not finished by the deadline did not answer in time."""
    found = run_bounded({name: functools.partial(check, config, env) for name, check in CHECKS.items()}, deadline_s)
    silent = {"enabled": True, "reachable": False, "error": f"no answer within {deadline_s:g} s"}
    return {name: result if result is not None else silent for name, result in found.items()}


def unusable(report: dict[str, Any]) -> list[str]:
    """The enabled endpoints the service could not use: unreachable, unwritable, or a key the intake refuses."""
    return [
        name
        for name, found in report["endpoints"].items()
        if found.get("enabled")
        and (
            found.get("reachable") is False
            or found.get("writable") is False
            or found.get("api_key", "accepted") not in ("accepted", "not checked")
        )
    ]


def diagnose(
    config: MonitoringConfig | None = None, env: Mapping[str, str] | None = None, deadline_s: float = DEADLINE_S
) -> dict[str, Any]:
    """Everything ``doctor`` reports, as data.

    Args:
        config: the configuration to check (default: resolved from files and ``env``).
        env: the environment variables (default: ``os.environ``).
        deadline_s: the longest one check may take; the checks run side by side.

    Returns:
        ``enabled``, ``exporters``, ``instrumentors``, ``endpoints``, ``config`` (secrets masked), ``metrics``
        (``source``: prometheus, file, database or None; ``metrics``: name -> type, series, tags), ``health``
        (the service's self-telemetry) and ``advice``.
    """
    env = os.environ if env is None else env
    config = config or get_monitoring_config(env=env)
    report: dict[str, Any] = {
        "enabled": config.enabled,
        "exporters": list(config.metrics_exporters),
        "instrumentors": instrumentors(env),
        "endpoints": _checked_endpoints(config, env, deadline_s),
        "config": _masked_config(config),
    }
    report["metrics"] = _listed_metrics(config, report["endpoints"]["prometheus"], deadline_s)
    report["health"] = health(report["metrics"].get("metrics", {}))
    report["advice"] = advice(report)
    return report


def render(report: dict[str, Any]) -> str:
    """The report as text for a person."""
    lines = [f"monitoring enabled: {report['enabled']}", f"metrics exporters: {', '.join(report['exporters'])}"]
    lines.append("instrumentors: " + (", ".join(f"{k} ({v})" for k, v in report["instrumentors"].items()) or "none"))
    for name, found in report["endpoints"].items():
        lines.append(f"{name}: " + ", ".join(f"{k}={v}" for k, v in found.items() if k != "metrics"))
    listed = report["metrics"]
    lines.append(
        f"metrics (from {listed['source']}: {listed['where']}):" if listed["source"] else "metrics: none found"
    )
    for name, family in listed["metrics"].items():
        lines.append(f"  {name} ({family['type']}, {family['series']} series) tags: {', '.join(family['tags'])}")
    lines.append("configuration:")
    lines.extend(f"  {key} = {value!r}" for key, value in report["config"].items())
    lines.append("advice:")
    lines.extend(f"  - {tip}" for tip in report["advice"])
    return "\n".join(lines)


def run_doctor(as_json: bool = False) -> int:
    """Print the report; returns the exit status (1 when an enabled endpoint cannot be used)."""
    report = diagnose()
    print(json.dumps(report, indent=2, default=str) if as_json else render(report))
    return 1 if unusable(report) else 0
