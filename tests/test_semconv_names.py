"""Golden name sets: what each instrumentor's metrics look like in a Prometheus scrape, per naming mode.

``OTEL_SEMCONV_STABILITY_OPT_IN`` unset (the seed's names), set to the signal (the semantic conventions' names
only) and to ``<signal>/dup`` (both). Each instrumentor is driven through a real library (Starlette through
httpx, SQLAlchemy on a SQLite file, redis-py against Redis at 127.0.0.1:6379, psutil), the scrape is parsed with
prometheus_client's parser, and every family is held with its type and label names: a renamed metric, a lost
unit suffix or a label that kept its dot fails here. ``tests/exporters/test_prometheus_semconv.py`` has a real
Prometheus store the semantic-convention names under the same names.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from chat_turbo_metrics import PerformanceMonitor, get_monitoring_config
from chat_turbo_metrics.exporters.prometheus import PrometheusExporter
from conftest import port_open, require

Families = dict[str, tuple[str, frozenset[str]]]  # family -> (type, label names of its samples)

# --- the goldens --------------------------------------------------------------------------------------------
_HTTP_SEED: Families = {
    "api_requests": ("counter", frozenset({"method", "endpoint", "status"})),
    "errors": ("counter", frozenset({"method", "endpoint", "status", "error_type"})),
    "http_request_duration_seconds": ("histogram", frozenset({"method", "endpoint", "status", "le"})),
    "http_request_size_bytes": ("histogram", frozenset({"method", "endpoint", "status", "le"})),
    "http_response_size_bytes": ("histogram", frozenset({"method", "endpoint", "status", "le"})),
    "http_requests_in_flight": ("gauge", frozenset()),
}
_HTTP_SERVER = frozenset({"http_request_method", "http_response_status_code", "http_route", "url_scheme", "error_type"})
_HTTP_SEMCONV: Families = {
    "http_server_request_duration_seconds": ("histogram", _HTTP_SERVER | {"le"}),
    "http_server_request_body_size_bytes": ("histogram", _HTTP_SERVER | {"le"}),
    "http_server_response_body_size_bytes": ("histogram", _HTTP_SERVER | {"le"}),
    "http_server_active_requests": ("gauge", frozenset({"http_request_method", "url_scheme"})),
}
_DB_SEED: Families = {
    "database_query_duration_seconds": ("histogram", frozenset({"table", "operation", "status", "le"})),
    "database_connections": ("gauge", frozenset({"pool", "state"})),
}
_DB_OPERATION = frozenset({"db_system_name", "db_operation_name", "db_collection_name", "error_type", "le"})
_DB_SEMCONV: Families = {
    "db_client_operation_duration_seconds": ("histogram", _DB_OPERATION),
    "db_client_connection_count": (
        "gauge",
        frozenset({"db_client_connection_pool_name", "db_client_connection_state"}),
    ),
}
_CACHE_SEED: Families = {
    "redis_command_duration_seconds": ("histogram", frozenset({"command", "status", "le"})),
    "cache_hits": ("counter", frozenset({"cache"})),
    "cache_misses": ("counter", frozenset({"cache"})),
    "cache_hit_ratio": ("gauge", frozenset({"cache"})),
}
_CACHE_SEMCONV: Families = {
    "db_client_operation_duration_seconds": (
        "histogram",
        frozenset({"db_system_name", "db_operation_name", "error_type", "le"}),
    ),
    # hits and misses have no semantic convention: they stay under their own names in every mode
    "cache_hits": ("counter", frozenset({"cache"})),
    "cache_misses": ("counter", frozenset({"cache"})),
    "cache_hit_ratio": ("gauge", frozenset({"cache"})),
}
_SYSTEM: Families = {
    "cpu_usage_percent": ("gauge", frozenset()),
    "memory_usage_mb": ("gauge", frozenset()),
    "process_threads": ("gauge", frozenset()),
    "process_open_fds": ("gauge", frozenset()),
    "python_gc_collections": ("counter", frozenset({"generation"})),
    "process_cpu_time_seconds": ("counter", frozenset({"cpu_mode"})),
    "process_memory_usage_bytes": ("gauge", frozenset()),
    "process_memory_virtual_bytes": ("gauge", frozenset()),
    "process_thread_count": ("gauge", frozenset()),
    "process_open_file_descriptor_count": ("gauge", frozenset()),
    "process_context_switches": ("counter", frozenset({"process_context_switch_type"})),
    "process_uptime_seconds": ("gauge", frozenset()),
}
GOLDEN: dict[tuple[str, str], Families] = {
    ("http", ""): _HTTP_SEED,
    ("http", "http"): _HTTP_SEMCONV,
    ("http", "http/dup"): {**_HTTP_SEED, **_HTTP_SEMCONV},
    ("database", ""): _DB_SEED,
    ("database", "database"): _DB_SEMCONV,
    ("database", "database/dup"): {**_DB_SEED, **_DB_SEMCONV},
    ("cache", ""): _CACHE_SEED,
    ("cache", "database"): _CACHE_SEMCONV,
    ("cache", "database/dup"): {**_CACHE_SEED, **_CACHE_SEMCONV},
    # The process.* names are emitted beside the seed's whatever the opt-in says (no signal governs them).
    ("system", ""): _SYSTEM,
    ("system", "http/dup,database/dup"): _SYSTEM,
}
# Families that depend on the machine rather than on the instrumentor (e.g. no TCP connection open).
_OPTIONAL = {"active_connections", "python_gc_pause_seconds", "event_loop_lag_seconds"}


# --- driving each instrumentor through its real library ------------------------------------------------------
class Boom(RuntimeError):
    """What the failing endpoint raises."""


def drive_http(monitor: PerformanceMonitor, _: Path) -> None:
    import httpx
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route

    from chat_turbo_metrics_http.asgi import AsgiMetricsMiddleware

    async def message(request: Request) -> PlainTextResponse:
        return PlainTextResponse("ok " + request.path_params["id"])

    async def fail(request: Request) -> PlainTextResponse:
        raise Boom("broken")

    app = AsgiMetricsMiddleware(
        Starlette(routes=[Route("/api/messages/{id}", message), Route("/fail", fail)]), monitor=monitor
    )

    async def run() -> None:
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            for path in ("/api/messages/7", "/nowhere", "/fail"):
                await client.get(path)

    asyncio.run(run())


def drive_database(monitor: PerformanceMonitor, directory: Path) -> Callable[[], None]:
    """Statements on a SQLite file (a QueuePool, whose counts are read at collection until the returned
    function uninstruments)."""
    from sqlalchemy import create_engine, text

    from chat_turbo_metrics_database import SQLAlchemyInstrumentor

    instrumentor = SQLAlchemyInstrumentor()
    instrumentor.instrument(monitor=monitor)
    engine = create_engine(f"sqlite:///{directory / 'golden.db'}")
    try:
        with engine.begin() as connection:
            connection.execute(text("CREATE TABLE IF NOT EXISTS users (id INTEGER PRIMARY KEY, name TEXT)"))
            connection.execute(text("INSERT INTO users (name) VALUES ('a')"))
            connection.execute(text("SELECT name FROM users WHERE id = 1"))
            with pytest.raises(Exception, match="no such table"):
                connection.execute(text("SELECT * FROM missing"))
    except BaseException:
        instrumentor.uninstrument()
        raise

    def done() -> None:
        engine.dispose()
        instrumentor.uninstrument()

    return done


def drive_cache(monitor: PerformanceMonitor, _: Path) -> None:
    require(port_open("127.0.0.1", 6379), "Redis is not running at 127.0.0.1:6379")
    import redis

    from chat_turbo_metrics_cache import RedisInstrumentor

    instrumentor = RedisInstrumentor()
    instrumentor.instrument(monitor=monitor)
    # Keys of this test's own (the cache label is the prefix, "golden"): its parameters run side by side under
    # pytest-xdist on the one Redis, and another's delete between this SET and GET turned the hit into a miss.
    present, absent = (f"golden:{name}-{uuid.uuid4().hex}" for name in ("present", "absent"))
    try:
        client = redis.Redis(host="127.0.0.1", port=6379)
        client.set(present, "1")
        client.get(present)
        client.get(absent)
        with pytest.raises(redis.ResponseError):
            client.execute_command("NOT_A_COMMAND")
        client.delete(present)
        client.close()
    finally:
        instrumentor.uninstrument()


def drive_system(monitor: PerformanceMonitor, _: Path) -> None:
    from chat_turbo_metrics_system import SystemInstrumentor

    instrumentor = SystemInstrumentor()
    instrumentor.instrument(monitor=monitor, watch_loops=False)
    try:
        monitor.snapshot()  # the first collection: counters' baselines
        sum(range(200_000))  # some CPU between collections
    finally:
        instrumentor.uninstrument()


DRIVERS: dict[str, Callable[[PerformanceMonitor, Path], Callable[[], None] | None]] = {
    "http": drive_http,
    "database": drive_database,
    "cache": drive_cache,
    "system": drive_system,
}


def families_of(text: str) -> Families:
    """Every family of a text scrape but the pipeline's own and ``target_info``: type and label names (without the
    scope labels every sample carries: the golden sets are the instrumentors' own labels)."""
    found: Families = {}
    for family in text_string_to_metric_families(text):
        if family.name == "target_info" or family.name.startswith("chat_turbo_metrics_"):
            continue
        labels = frozenset(key for s in family.samples for key in s.labels if not key.startswith("otel_scope_"))
        found[family.name] = (family.type, labels)
    return found


def opted_in_monitor(opt_in: str) -> PerformanceMonitor:
    """A private monitor configured from an environment where ``OTEL_SEMCONV_STABILITY_OPT_IN`` is ``opt_in``."""
    env = {
        "CHAT_TURBO_ENV": "test",
        "OTEL_SEMCONV_STABILITY_OPT_IN": opt_in,
        "METRICS_SELF_TELEMETRY": "false",
    }
    return PerformanceMonitor(get_monitoring_config(env=env))


@pytest.fixture
def opted_in() -> Iterator[Callable[[str], PerformanceMonitor]]:
    """A monitor configured from an environment with ``OTEL_SEMCONV_STABILITY_OPT_IN`` set as given."""
    made: list[PerformanceMonitor] = []

    def build(opt_in: str) -> PerformanceMonitor:
        monitor = opted_in_monitor(opt_in)
        made.append(monitor)
        return monitor

    yield build
    for monitor in made:
        monitor.shutdown()


@pytest.mark.parametrize(("instrumentor", "opt_in"), list(GOLDEN))
def test_scrape_holds_the_golden_name_set(
    instrumentor: str, opt_in: str, opted_in: Callable[[str], PerformanceMonitor], tmp_path: Path
) -> None:
    monitor = opted_in(opt_in)
    done = DRIVERS[instrumentor](monitor, tmp_path)
    exporter = PrometheusExporter(host="127.0.0.1", port=0)
    monitor.add_exporter(exporter)
    try:
        found = families_of(exporter.render())
    finally:
        if done is not None:
            done()
    for optional in _OPTIONAL:
        found.pop(optional, None)
    assert found == GOLDEN[instrumentor, opt_in]


def test_semconv_values_are_the_recorded_ones(opted_in: Callable[[str], PerformanceMonitor], tmp_path: Path) -> None:
    """The golden names carry the right values: counts per route and status, seconds, the error's class."""
    monitor = opted_in("http/dup,database")
    drive_http(monitor, tmp_path)
    drive_database(monitor, tmp_path)()
    samples = {
        (sample.name, tuple(sorted((k, v) for k, v in sample.labels.items() if not k.startswith("otel_scope_")))): (
            sample.value
        )
        for family in text_string_to_metric_families(monitor.snapshot().to_prometheus())
        for sample in family.samples
    }
    ok = (("http_request_method", "GET"), ("http_response_status_code", "200"), ("http_route", "/api/messages/{id}"))
    assert samples["http_server_request_duration_seconds_count", (*ok, ("url_scheme", "http"))] == 1
    failed = (
        ("error_type", "Boom"),
        ("http_request_method", "GET"),
        ("http_response_status_code", "500"),
        ("http_route", "/fail"),
        ("url_scheme", "http"),
    )
    assert samples["http_server_request_duration_seconds_count", failed] == 1
    unmatched = (("http_request_method", "GET"), ("http_response_status_code", "404"), ("url_scheme", "http"))
    assert samples["http_server_request_duration_seconds_count", unmatched] == 1  # no http_route: none matched
    # the seed's names are still there in http/dup, with the same count
    seed = (("endpoint", "/api/messages/{id}"), ("method", "GET"), ("status", "200"))
    assert samples["api_requests_total", seed] == 1
    select = (("db_collection_name", "users"), ("db_operation_name", "SELECT"), ("db_system_name", "sqlite"))
    assert samples["db_client_operation_duration_seconds_count", select] == 1
    missing = (("db_operation_name", "SELECT"), ("db_system_name", "sqlite"), ("error_type", "OperationalError"))
    assert samples["db_client_operation_duration_seconds_count", (("db_collection_name", "missing"), *missing)] == 1
    # database (not database/dup): the seed's database names are gone
    assert not [key for key in samples if key[0].startswith("database_query_duration")]
    # the conventions' DB buckets (0.001 ... 10 s), not the HTTP ones
    buckets = sorted(
        float(dict(labels)["le"])
        for name, labels in samples
        if name == "db_client_operation_duration_seconds_bucket"
        and dict(labels).get("db_collection_name") == "users"
        and dict(labels).get("db_operation_name") == "SELECT"
    )
    assert buckets == [0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, float("inf")]


def test_an_argument_and_the_alias_win_over_the_opt_in(opted_in: Callable[[str], PerformanceMonitor]) -> None:
    """``metric_names=`` and ``CHAT_TURBO_HTTP_METRIC_NAMES`` choose for the HTTP middleware; the opt-in
    (from the monitor's configuration) applies only where neither did."""
    from chat_turbo_metrics.instrumentation import SemconvMode
    from chat_turbo_metrics_http._metrics import RequestMetrics
    from chat_turbo_metrics_http._settings import HttpMetricsSettings

    monitor = opted_in("http")
    modes = []
    for names, environ in ((None, {}), ("seed", {}), (None, {"CHAT_TURBO_HTTP_METRIC_NAMES": "both"})):
        metrics = RequestMetrics(HttpMetricsSettings.from_options(metric_names=names, environ=environ), monitor)
        metrics.bound()
        modes.append(metrics.mode)
    assert modes == [SemconvMode.SEMCONV, SemconvMode.SEED, SemconvMode.BOTH]


def test_configure_switches_the_names_of_a_bound_middleware() -> None:
    """The process-wide monitor reconfigured with another opt-in: the middleware rebinds with the new names."""
    from chat_turbo_metrics import configure

    monitor = configure(environment="test", metrics_exporters=(), self_telemetry=False)
    try:
        drive_http(monitor, Path())
        assert "http_request_duration_seconds" in monitor.snapshot().names()
        # a middleware following the process-wide monitor (no monitor= given)
        from chat_turbo_metrics_http._metrics import RequestMetrics
        from chat_turbo_metrics_http._settings import HttpMetricsSettings

        metrics = RequestMetrics(HttpMetricsSettings.from_options(environ={}))
        metrics.finish("GET", "/x", 200, "http", 0.01, 0, 2, None, metrics.started("GET", "http"))
        assert monitor.snapshot().value("api_requests", {"method": "GET", "endpoint": "/x", "status": 200}) == 1
        configure(environment="test", metrics_exporters=(), self_telemetry=False, semconv_stability_opt_in="http")
        metrics.finish("GET", "/x", 200, "http", 0.01, 0, 2, None, metrics.started("GET", "http"))
        snapshot = monitor.snapshot()
        tags = {
            "http.request.method": "GET",
            "http.route": "/x",
            "http.response.status_code": 200,
            "url.scheme": "http",
        }
        assert snapshot.value("http.server.request.duration", tags)["count"] == 1
        assert "api_requests" not in snapshot.names()
    finally:
        configure(environment="test", metrics_exporters=(), self_telemetry=False)
