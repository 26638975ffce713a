"""``doctor``'s endpoint checks: the Prometheus port, the OTLP collector, the database, the Datadog intake, the file.

Each check is a function of the configuration and an environment mapping, so tests inject both. A check talks to
its endpoint as the exporter would (an empty OTLP export, Datadog's key validation, a ``SELECT 1``), each network
step bounded by :data:`TIMEOUT_S`; :func:`run_bounded` runs them side by side under one deadline, so an endpoint
that accepts a connection and never answers (or trickles) is reported as not answering, never waited for.
"""

from __future__ import annotations

import http.client
import os
import re
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from chat_turbo_metrics._cli.doctor_sources import bounded_connect_args, keeps_values, label_values, sample_value
from chat_turbo_metrics._core.config import ConfigurationError, MonitoringConfig, history_url, setting_label

TIMEOUT_S = 3.0  # each connection, request or query of a check
DEADLINE_S = 8.0  # each check as a whole (a trickling peer defeats per-read timeouts)
_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? ")
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="')
Check = Callable[[MonitoringConfig, Mapping[str, str]], dict[str, Any]]


def run_bounded(calls: Mapping[str, Callable[[], Any]], deadline_s: float) -> dict[str, Any]:
    """Run each call on a thread of its own; a call that has not returned within ``deadline_s`` gives None.

    A call stuck in a socket cannot be stopped: its daemon thread is left behind, and does not keep the
    command from exiting. A call that raises gives None too.
    """
    results: dict[str, Any] = {}

    def run(name: str, call: Callable[[], Any]) -> None:
        try:
            results[name] = call()
        except Exception:  # a check's own failure: reported as not answering, never a crash of doctor
            results[name] = None

    threads = [threading.Thread(target=run, args=item, daemon=True, name=f"doctor-{item[0]}") for item in calls.items()]
    for thread in threads:
        thread.start()
    end = time.monotonic() + deadline_s
    for thread in threads:
        thread.join(max(0.0, end - time.monotonic()))
    return {name: results.get(name) for name in calls}


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
        except (OSError, ValueError, http.client.HTTPException) as error:
            result["error"] = f"port held, but /metrics does not answer: {type(error).__name__}"
            result["reachable"] = False  # the service's exporter could neither bind it nor be read there
    return result


def check_otlp(config: MonitoringConfig, env: Mapping[str, str]) -> dict[str, Any]:
    """Whether the OTLP collector accepts an export with no data in it, over the protocol configured."""
    names = [name for name in config.metrics_exporters if name.startswith("otlp")]
    if not names:
        return {"enabled": False}
    grpc = "otlp_proto_grpc" in names or ("otlp" in names and config.otlp_protocol == "grpc")
    signal = env.get("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT")  # used as it is; the general one gets the path
    base = (
        signal
        or env.get("OTEL_EXPORTER_OTLP_ENDPOINT")
        or ("http://localhost:4317" if grpc else "http://localhost:4318")
    )
    parts = urlsplit(base if "://" in base else f"http://{base}")
    headers = _otlp_headers(env.get("OTEL_EXPORTER_OTLP_METRICS_HEADERS") or env.get("OTEL_EXPORTER_OTLP_HEADERS"))
    if grpc:
        port = parts.port or (443 if parts.scheme == "https" else 4317)
        endpoint = f"{parts.scheme}://{parts.hostname or 'localhost'}:{port}"
        answer = _otlp_grpc_answer(f"{parts.hostname or 'localhost'}:{port}", parts.scheme == "https", headers)
    else:
        endpoint = base if signal else base.rstrip("/") + "/v1/metrics"
        answer = _http_answer(
            urllib.request.Request(
                endpoint, data=b"", method="POST", headers={"Content-Type": "application/x-protobuf", **headers}
            )
        )
    accepted = answer == "OK" or answer.startswith("HTTP 2")
    return {"enabled": True, "endpoint": endpoint, "reachable": accepted, "answer": answer}


def _otlp_headers(raw: str | None) -> dict[str, str]:
    """``OTEL_EXPORTER_OTLP_HEADERS`` (``key=value,...``, URL-encoded), as the exporter sends them (never shown)."""
    pairs = (item.partition("=") for item in (raw or "").split(",") if "=" in item)
    return {unquote(key).strip().lower(): unquote(value).strip() for key, _, value in pairs if key.strip()}


def _http_answer(request: urllib.request.Request) -> str:
    """``HTTP <status>`` of the answer, or why there was none (the URL and the headers are never quoted)."""
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT_S) as reply:
            reply.read(65_536)
            return f"HTTP {reply.status}"
    except urllib.error.HTTPError as error:
        return f"HTTP {error.code}"
    except (OSError, ValueError, http.client.HTTPException) as error:
        reason = getattr(error, "reason", None)
        return f"no answer: {type(reason if isinstance(reason, BaseException) else error).__name__}"


def _otlp_grpc_answer(target: str, secure: bool, headers: dict[str, str]) -> str:
    try:
        import grpc  # type: ignore[import-untyped]
        from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2, metrics_service_pb2_grpc
    except ImportError:
        return "no answer: grpcio is not installed (pip install 'chat-turbo-metrics[otlp]')"
    channel = grpc.secure_channel(target, grpc.ssl_channel_credentials()) if secure else grpc.insecure_channel(target)
    try:
        stub = metrics_service_pb2_grpc.MetricsServiceStub(channel)  # type: ignore[no-untyped-call]
        request = metrics_service_pb2.ExportMetricsServiceRequest()
        stub.Export(request, timeout=TIMEOUT_S, metadata=tuple(headers.items()))
        return "OK"
    except grpc.RpcError as error:
        return f"gRPC {error.code().name}"  # DEADLINE_EXCEEDED: connected, never answered
    finally:
        channel.close()


def check_database(config: MonitoringConfig, env: Mapping[str, str]) -> dict[str, Any]:
    """Whether the history database accepts a connection (its URL masked)."""
    if "chat_turbo_database" not in config.metrics_exporters:
        return {"enabled": False}
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    from chat_turbo_metrics.exporters._database_query import read_only_url, sqlite_file

    secret = history_url(config)
    result: dict[str, Any] = {"enabled": True, "url": secret.masked()}
    try:
        url = make_url(secret.reveal())
        path = sqlite_file(url)
        if path is not None and not path.exists():  # the first export creates it; the doctor creates nothing
            result["reachable"] = os.access(path.absolute().parent, os.W_OK)
            return result
        engine = create_engine(read_only_url(url), connect_args=bounded_connect_args(url, TIMEOUT_S))
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
    """Whether the Datadog intake answers, and accepts the API key (asked through Datadog's key validation)."""
    if "datadog" not in config.metrics_exporters:
        return {"enabled": False}
    from chat_turbo_metrics.exporters.datadog._transport import intake_endpoint

    try:
        base, login = intake_endpoint(
            config.datadog_site, config.datadog_endpoint, setting_label(config, "datadog_endpoint")
        )
    except ConfigurationError as error:
        return {"enabled": True, "reachable": False, "error": str(error)}
    key = config.datadog_api_key
    headers = {"DD-API-KEY": key.reveal()} if key else {}
    if login is not None:  # a proxy in front of the intake that asks for a login, as the exporter sends it
        headers["Authorization"] = login.reveal()
    request = urllib.request.Request(f"{base}/api/v1/validate", headers=headers)
    answer = _http_answer(request)
    if key is None:
        api_key = "missing (DD_API_KEY)"
    else:
        api_key = {"HTTP 200": "accepted", "HTTP 403": "rejected by the intake"}.get(answer, "not checked")
    return {
        "enabled": True,
        "endpoint": f"{base}/api/v2/series",
        "api_key": api_key,
        "reachable": answer.startswith("HTTP "),
        "answer": answer,
    }


def check_file(config: MonitoringConfig, env: Mapping[str, str]) -> dict[str, Any]:
    """Whether the metrics file can be written (its directory exists and is writable)."""
    if "chat_turbo_file" not in config.metrics_exporters:
        return {"enabled": False}
    path = Path(config.file_path).absolute()
    directory = path.parent
    writable = os.access(path, os.W_OK) if path.exists() else directory.is_dir() and os.access(directory, os.W_OK)
    return {"enabled": True, "path": str(path), "writable": writable}


_NOT_TAGS = frozenset({"le", "otel_scope_name", "otel_scope_version"})  # added by the exposition, not recorded


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
        keys = set(_LABEL.findall(labels)) - _NOT_TAGS
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
