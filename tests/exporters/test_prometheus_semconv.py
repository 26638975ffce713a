"""A real Prometheus scrapes the semantic-convention names and stores them as the OpenTelemetry-Prometheus
compatibility specification renders them: ``http_server_request_duration_seconds``, labels with ``_`` for ``.``."""

from __future__ import annotations

from pathlib import Path

from test_prometheus import PrometheusServer, start_prometheus, stop_prometheus, wait_ready

from chat_turbo_metrics.exporters.prometheus import PrometheusExporter
from test_semconv_names import drive_database, drive_http, drive_system, families_of, opted_in_monitor


def stored_names(server: PrometheusServer) -> set[str]:
    return {str(name) for name in server.api("/api/v1/label/__name__/values")}


def test_real_prometheus_stores_the_semconv_names(tmp_path: Path) -> None:
    monitor = opted_in_monitor("http,database")
    drive_http(monitor, tmp_path)
    database_done = drive_database(monitor, tmp_path)
    drive_system(monitor, tmp_path)
    exporter = PrometheusExporter(host="127.0.0.1", port=0)
    monitor.add_exporter(exporter)
    expected = families_of(exporter.render())
    assert {"http_server_request_duration_seconds", "db_client_operation_duration_seconds"} <= set(expected)
    process, server = start_prometheus(tmp_path, exporter.port)
    try:
        wait_ready(process, server)
        both = "http_server_request_duration_seconds_bucket|process_cpu_time_seconds_total"
        server.wait_for(f'count({{__name__=~"{both}"}}) by (__name__)', lambda result: len(result) == 2)
        names = stored_names(server)
        for family, (kind, labels) in expected.items():
            samples = {
                "histogram": [f"{family}_bucket", f"{family}_sum", f"{family}_count"],
                "counter": [f"{family}_total"],
            }.get(kind, [family])
            assert set(samples) <= names, family
            series = server.api("/api/v1/series", **{"match[]": samples[0]})
            stored = {key for item in series for key in item} - {"__name__", "job", "instance"}
            assert stored == {*labels, "otel_scope_name", "otel_scope_version"}, family  # the scope of every sample
        # and PromQL reads the conventions' duration per route
        per_route = server.query('sum by (http_route) (http_server_request_duration_seconds_count{http_route!=""})')
        assert {item["metric"]["http_route"]: float(item["value"][1]) for item in per_route} == {
            "/api/messages/{id}": 1.0,
            "/fail": 1.0,
        }
    finally:
        database_done()
        stop_prometheus(process)
        monitor.shutdown()
