"""``chat-turbo-metrics doctor``: the seed's troubleshooting questions, answered from this environment.

Is monitoring enabled; which exporters and instrumentors are active; can each endpoint be reached (the
Prometheus port, the OTLP collector, the database, the metrics file); which metrics exist with which tags
(from the running service's ``/metrics`` when it answers); the effective configuration with secrets masked;
and advice for high memory, missing metrics and alert spam drawn from what was found. Every check is a
function of the configuration and an environment mapping, so tests inject both.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import socket
import urllib.request
from collections.abc import Callable, Mapping
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from chat_turbo_metrics._config import (
    ConfigurationError,
    MonitoringConfig,
    ViewConfig,
    get_monitoring_config,
    setting_label,
)
from chat_turbo_metrics._doctor_sources import (
    health,
    health_advice,
    keeps_values,
    label_values,
    sample_value,
    stored_metrics,
)
from chat_turbo_metrics._secret import Secret

TIMEOUT_S = 3.0
HIGH_CARDINALITY = 500  # series of one metric worth a look
_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? ")
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="')


def _reachable(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=TIMEOUT_S):
            return True
    except OSError:
        return False


def check_prometheus(config: MonitoringConfig, env: Mapping[str, str]) -> dict[str, Any]:
    """Whether the Prometheus port is free or held, and by a service that answers ``/metrics``."""
    if "prometheus" not in config.metrics_exporters:
        return {"enabled": False}
    host, port = config.prometheus_host, config.prometheus_port
    result: dict[str, Any] = {"enabled": True, "url": f"http://{host}:{port}/metrics"}
    result["port"] = "held" if _reachable(host, port) else "free"
    if result["port"] == "held":
        try:
            with urllib.request.urlopen(result["url"], timeout=TIMEOUT_S) as reply:
                result["metrics"] = parse_families(reply.read().decode("utf-8", "replace"))
        except (OSError, ValueError) as error:
            result["error"] = f"port held, but /metrics does not answer: {type(error).__name__}"
    return result


def check_otlp(config: MonitoringConfig, env: Mapping[str, str]) -> dict[str, Any]:
    """Whether the OTLP collector's port accepts connections."""
    if not any(name.startswith("otlp") for name in config.metrics_exporters):
        return {"enabled": False}
    grpc = config.otlp_protocol == "grpc"
    default = "http://localhost:4317" if grpc else "http://localhost:4318"
    endpoint = env.get("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT") or env.get("OTEL_EXPORTER_OTLP_ENDPOINT") or default
    parts = urlsplit(endpoint if "://" in endpoint else f"http://{endpoint}")
    port = parts.port or (443 if parts.scheme == "https" else 4317 if grpc else 4318)
    host = parts.hostname or "localhost"
    return {"enabled": True, "endpoint": f"{parts.scheme}://{host}:{port}", "reachable": _reachable(host, port)}


def check_database(config: MonitoringConfig, env: Mapping[str, str]) -> dict[str, Any]:
    """Whether the history database accepts a connection (its URL masked)."""
    if "chat_turbo_database" not in config.metrics_exporters:
        return {"enabled": False}
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    from chat_turbo_metrics.exporters._database_query import read_only_url, sqlite_file

    secret = config.database_url or Secret("sqlite:///chat_turbo_metrics.db")
    result: dict[str, Any] = {"enabled": True, "url": secret.masked()}
    try:
        url = make_url(secret.reveal())
        path = sqlite_file(url)
        if path is not None and not path.exists():  # the first export creates it; the doctor creates nothing
            result["reachable"] = os.access(path.absolute().parent, os.W_OK)
            return result
        args = {"connect_timeout": int(TIMEOUT_S)} if url.get_backend_name() == "postgresql" else {}
        engine = create_engine(read_only_url(url), connect_args=args)
        try:
            with engine.connect() as connection:
                connection.execute(text("SELECT 1"))
        finally:
            engine.dispose()
        result["reachable"] = True
    except Exception as error:  # the driver's message can quote the URL: only its type is shown
        result["reachable"] = False
        result["error"] = type(error).__name__
    return result


def check_datadog(config: MonitoringConfig, env: Mapping[str, str]) -> dict[str, Any]:
    """Whether the Datadog intake's port accepts connections, and whether an API key is set (never shown)."""
    if "datadog" not in config.metrics_exporters:
        return {"enabled": False}
    from chat_turbo_metrics.exporters.datadog._transport import intake_base_url

    try:
        base = intake_base_url(config.datadog_site, config.datadog_endpoint, setting_label(config, "datadog_endpoint"))
    except ConfigurationError as error:
        return {"enabled": True, "reachable": False, "error": str(error)}
    parts = urlsplit(base)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return {
        "enabled": True,
        "endpoint": f"{base}/api/v2/series",
        "api_key": "set" if config.datadog_api_key is not None else "missing (DD_API_KEY)",
        "reachable": _reachable(parts.hostname or "", port),
    }


def check_file(config: MonitoringConfig, env: Mapping[str, str]) -> dict[str, Any]:
    """Whether the metrics file can be written (its directory exists and is writable)."""
    if "chat_turbo_file" not in config.metrics_exporters:
        return {"enabled": False}
    path = Path(config.file_path).absolute()
    directory = path.parent
    writable = os.access(path, os.W_OK) if path.exists() else directory.is_dir() and os.access(directory, os.W_OK)
    return {"enabled": True, "path": str(path), "writable": writable}


def instrumentors(env: Mapping[str, str]) -> dict[str, str]:
    """Installed OpenTelemetry instrumentors and whether ``OTEL_PYTHON_DISABLED_INSTRUMENTATIONS`` disables them."""
    disabled = {n.strip() for n in env.get("OTEL_PYTHON_DISABLED_INSTRUMENTATIONS", "").split(",") if n.strip()}
    found = {ep.name for ep in entry_points(group="opentelemetry_instrumentor")}
    return {name: "disabled" if name in disabled or "all" in disabled else "active" for name in sorted(found)}


def parse_families(text: str) -> dict[str, dict[str, Any]]:
    """Metric family -> its type, series count and tag keys, from a Prometheus text exposition."""
    families: dict[str, dict[str, Any]] = {}
    types: dict[str, str] = {}
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ", 3)
            types[name] = kind
            families[name] = {"type": kind, "series": 0, "tags": set()}
            continue
        match = _SAMPLE.match(line)
        if match is None:
            continue
        name, labels = match.group(1), match.group(2) or ""
        family = next((f for f in _family_names(name) if f in families), None)
        if family is None:
            continue
        keys = set(_LABEL.findall(labels)) - {"le"}
        families[family]["tags"] |= keys
        if keeps_values(family) and name in (family, f"{family}_count"):  # self-telemetry: keep values
            families[family].setdefault("samples", []).append([label_values(labels), sample_value(line)])
        if not name.endswith(("_bucket", "_sum")):
            families[family]["series"] += 1
    return {name: {**info, "tags": sorted(info["tags"])} for name, info in families.items()}


def _family_names(sample: str) -> tuple[str, ...]:
    names = [sample]
    for suffix in ("_bucket", "_sum", "_count"):
        if sample.endswith(suffix):
            names.append(sample[: -len(suffix)])
    return tuple(names)


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


CHECKS: dict[str, Callable[[MonitoringConfig, Mapping[str, str]], dict[str, Any]]] = {
    "prometheus": check_prometheus,
    "otlp": check_otlp,
    "database": check_database,
    "file": check_file,
    "datadog": check_datadog,
}


def _listed_metrics(config: MonitoringConfig, prometheus: dict[str, Any]) -> dict[str, Any]:
    """The service's metrics: from its /metrics, else from what it stored, else none (``source`` None)."""
    if "metrics" in prometheus:
        return {"source": "prometheus", "where": prometheus["url"], "metrics": prometheus["metrics"]}
    return stored_metrics(config) or {"source": None, "where": None, "metrics": {}}


def diagnose(config: MonitoringConfig | None = None, env: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Everything ``doctor`` reports, as data.

    Args:
        config: the configuration to check (default: resolved from files and ``env``).
        env: the environment variables (default: ``os.environ``).

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
        "endpoints": {name: check(config, env) for name, check in CHECKS.items()},
        "config": _masked_config(config),
    }
    report["metrics"] = _listed_metrics(config, report["endpoints"]["prometheus"])
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
    endpoints = report["endpoints"].values()
    broken = any(e.get("enabled") and (e.get("reachable") is False or e.get("writable") is False) for e in endpoints)
    return 1 if broken else 0
