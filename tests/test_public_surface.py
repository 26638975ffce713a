"""The public API, locked: each public module's names, so adding or removing one is a deliberate change here.

A module is public when no part of its dotted name starts with an underscore. Its public names are its
``__all__`` or, without one, the public names it defines. Changing the surface means changing ``SURFACE`` (and the
changelog); every name the README and the docs import must be in it.
"""

from __future__ import annotations

import ast
import importlib
import pkgutil
import subprocess
import sys
import textwrap
import types
from pathlib import Path

import pytest

import chat_turbo_metrics

ROOT = Path(__file__).resolve().parent.parent
# Generated from the settings table (scripts/settings_docs.py); tests/test_settings_docs.py keeps it in step.
GENERATED = {"chat_turbo_metrics.environment_variables"}

SURFACE: dict[str, set[str]] = {
    "chat_turbo_metrics": {
        "AlertManager",
        "AlertRule",
        "BoundInstrument",
        "ConfigurationError",
        "MetricsSnapshot",
        "MonitoringConfig",
        "PerformanceMonitor",
        "PipelineView",
        "Secret",
        "Timer",
        "ViewConfig",
        "__version__",
        "cached",
        "configure",
        "get_monitoring_config",
        "load_config_file",
        "monitor_database_query",
        "monitor_database_query_async",
        "record_cache_hit",
        "record_cache_miss",
        "set_database_connection",
    },
    "chat_turbo_metrics.alerting": {
        "Alert",
        "AlertListener",
        "AlertManager",
        "AlertRule",
        "AlertState",
        "AlertTransition",
        "AlertingSpanProcessor",
        "AlertmanagerForwarder",
        "Delivered",
        "DeliveryError",
        "DeliveryStats",
        "Dispatcher",
        "EmailNotifier",
        "EvaluationHook",
        "LogNotifier",
        "Matcher",
        "Notification",
        "NotifiedAlert",
        "RetryPolicy",
        "Route",
        "RuleError",
        "Silence",
        "SlackNotifier",
        "SpanSelector",
        "WebhookNotifier",
        "fingerprint",
        "load_rules",
        "notifiers_from_config",
        "parse_duration",
    },
    "chat_turbo_metrics.alerting.manager": {"AlertManager"},
    "chat_turbo_metrics.alerting.notifiers": {
        "AlertmanagerForwarder",
        "EmailNotifier",
        "LogNotifier",
        "SlackNotifier",
        "WebhookNotifier",
    },
    "chat_turbo_metrics.alerting.notifiers.alertmanager": {"AlertmanagerForwarder"},
    "chat_turbo_metrics.alerting.notifiers.configured": {"notifiers_from_config"},
    "chat_turbo_metrics.alerting.notifiers.email": {"EmailNotifier", "TLS_MODES"},
    "chat_turbo_metrics.alerting.notifiers.log": {"LogNotifier"},
    "chat_turbo_metrics.alerting.notifiers.slack": {"SlackNotifier"},
    "chat_turbo_metrics.alerting.notifiers.webhook": {"SIGNATURE_HEADER", "WebhookNotifier", "sign"},
    "chat_turbo_metrics.alerting.promql": {
        "CONDITIONS",
        "ExportedRule",
        "KNOWN_METRICS",
        "NotExportable",
        "alert_name",
        "export_rule",
        "expression",
        "metric_kind",
        "metric_name",
        "prometheus_duration",
        "prometheus_rules",
        "promql_string",
        "template_literal",
        "yaml_string",
    },
    "chat_turbo_metrics.alerting.rules": {
        "AlertRule",
        "CONDITIONS",
        "Condition",
        "DEFAULT_STATISTICS",
        "DEFAULT_WINDOW_S",
        "KINDS",
        "MAX_DURATION_S",
        "MISSING_DATA",
        "MissingData",
        "RULE_KEYS",
        "RuleError",
        "SPAN_KINDS",
        "STATISTICS",
        "SpanSelector",
        "TEMPLATE",
        "parse_duration",
    },
    "chat_turbo_metrics.alerting.spans": {"AlertingSpanProcessor", "HTTP_DURATION_BUCKETS"},
    "chat_turbo_metrics.exporters": {
        "DataDogExporter",
        "DatabaseExporter",
        "FileExporter",
        "MetricHistory",
        "PrometheusExporter",
        "read_metric_records",
    },
    "chat_turbo_metrics.exporters.database": {
        "DatabaseExporter",
        "GaugePoint",
        "HistogramRow",
        "MetricHistory",
        "RateRow",
    },
    "chat_turbo_metrics.exporters.datadog": {"DataDogExporter", "EnvironmentDataDogExporter"},
    "chat_turbo_metrics.exporters.file": {"FileExporter", "read_metric_records"},
    "chat_turbo_metrics.exporters.otlp": {
        "GRPC_CHANNEL_OPTIONS",
        "METRICS",
        "METRICS_GRPC",
        "METRICS_HTTP",
        "OtlpExporters",
        "SPANS",
        "SPANS_GRPC",
        "SPANS_HTTP",
    },
    "chat_turbo_metrics.exporters.prometheus": {"PrometheusExporter", "make_asgi_app", "make_wsgi_app"},
    "chat_turbo_metrics.instrumentation": {
        "CACHE_HITS",
        "CACHE_MISSES",
        "DATABASE_QUERY_DURATION",
        "DB_CLIENT_CONNECTION_COUNT",
        "DB_CLIENT_OPERATION_DURATION",
        "EnvironmentVariable",
        "FLOAT_MAX",
        "HTTP_CLIENT_REQUEST_DURATION",
        "MetricDefinition",
        "Problems",
        "SEMCONV_STABILITY_OPT_IN",
        "SemconvMode",
        "StatementClassifier",
        "bundle_produced",
        "define_metrics",
        "prometheus_label",
        "register_after_fork",
        "semconv_mode",
        "strip_literals",
        "when_imported",
    },
    "chat_turbo_metrics.multiprocess": {"Membership", "SharedEndpoint", "Source", "serve"},
}


def public_modules() -> list[str]:
    found = [
        info.name
        for info in pkgutil.walk_packages(chat_turbo_metrics.__path__, "chat_turbo_metrics.")
        if not any(part.startswith("_") for part in info.name.split(".")[1:])
    ]
    return ["chat_turbo_metrics", *found]


def public_names(module: types.ModuleType) -> set[str]:
    declared = getattr(module, "__all__", None)
    if declared is not None:
        return set(declared)
    return {
        name
        for name, value in vars(module).items()
        if not name.startswith("_")
        and not isinstance(value, types.ModuleType)
        and getattr(value, "__module__", module.__name__) == module.__name__
    }


def test_the_public_modules_are_the_locked_ones() -> None:
    assert set(public_modules()) - GENERATED == set(SURFACE)


@pytest.mark.parametrize("name", sorted(SURFACE))
def test_public_names_of_each_module_are_locked(name: str) -> None:
    module = importlib.import_module(name)
    assert public_names(module) == SURFACE[name]
    for public in SURFACE[name]:
        assert hasattr(module, public), f"{name}.__all__ names {public!r}, which it lacks"


@pytest.mark.parametrize("name", ["chat_turbo_metrics", "chat_turbo_metrics.alerting", "chat_turbo_metrics.exporters"])
def test_the_packages_users_import_from_declare_all(name: str) -> None:
    assert isinstance(getattr(importlib.import_module(name), "__all__", None), list)


def documented_imports() -> list[tuple[str, str, str]]:
    """``(file, module, name)`` for every ``from chat_turbo_metrics... import name`` in the README and the docs."""
    found = []
    for path in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        text = path.read_text()
        for block in text.split("```python")[1:]:
            code = block.split("```")[0]
            for node in ast.walk(ast.parse(code)):
                if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("chat_turbo_metrics"):
                    found.extend((path.name, str(node.module), alias.name) for alias in node.names)
    return found


def test_every_name_the_documentation_imports_is_public() -> None:
    imports = documented_imports()
    assert len({module for _, module, _ in imports}) >= 3  # the README imports from the package and two modules
    for where, module, name in imports:
        assert not any(part.startswith("_") for part in module.split(".")), f"{where} imports private {module}"
        assert name in SURFACE[module], f"{where} imports {module}.{name}, which is not public"


def test_the_pipeline_the_monitor_hands_out_is_the_public_view(monitor: chat_turbo_metrics.PerformanceMonitor) -> None:
    view = monitor.pipeline
    assert isinstance(view, chat_turbo_metrics.PipelineView)
    assert not hasattr(view, "fanout")
    assert not hasattr(view, "collector")
    with pytest.raises(AttributeError):
        view.config = monitor.config  # type: ignore[misc]


def test_the_alert_manager_is_imported_when_first_used_and_is_the_alerting_one() -> None:
    # A web worker that never alerts does not load the alerting package (a third of this package's modules);
    # the seed's `from chat_turbo_metrics import AlertManager` and a star import still find both names.
    code = textwrap.dedent(
        """
        import sys
        import chat_turbo_metrics
        print(any(name.startswith("chat_turbo_metrics.alerting") for name in sys.modules))
        print({"AlertManager", "AlertRule"} <= set(dir(chat_turbo_metrics)))
        from chat_turbo_metrics import AlertManager
        from chat_turbo_metrics.alerting import AlertManager as Original, AlertRule
        namespace = {}
        exec("from chat_turbo_metrics import *", namespace)
        print(AlertManager is Original, namespace["AlertRule"] is AlertRule)
        try:
            chat_turbo_metrics.NoSuchName
        except AttributeError as error:
            print(type(error).__name__)
        """
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["False", "True", "True", "True", "AttributeError"]
