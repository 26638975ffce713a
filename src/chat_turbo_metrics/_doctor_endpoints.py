"""``doctor``'s endpoint checks: the Prometheus port, the OTLP collector, the database, the Datadog intake, the file.

Each check is a function of the configuration and an environment mapping, so tests inject both.
"""

from __future__ import annotations

import os
import re
import socket
import urllib.request
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from chat_turbo_metrics._config import ConfigurationError, MonitoringConfig, setting_label
from chat_turbo_metrics._doctor_sources import keeps_values, label_values, sample_value
from chat_turbo_metrics._secret import Secret

TIMEOUT_S = 3.0
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

    secret = config.database_url or Secret("sqlite:///chat_turbo_metrics.db")
    result: dict[str, Any] = {"enabled": True, "url": secret.masked()}
    try:
        url = make_url(secret.reveal())
        args = {"connect_timeout": int(TIMEOUT_S)} if url.get_backend_name() == "postgresql" else {}
        engine = create_engine(url, connect_args=args)
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


CHECKS: dict[str, Callable[[MonitoringConfig, Mapping[str, str]], dict[str, Any]]] = {
    "prometheus": check_prometheus,
    "otlp": check_otlp,
    "database": check_database,
    "file": check_file,
    "datadog": check_datadog,
}
