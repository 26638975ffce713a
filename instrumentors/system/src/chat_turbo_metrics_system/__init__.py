"""Process metrics for chat_turbo_metrics, read at collection time (entry point ``chat_turbo_system``)."""

from chat_turbo_metrics_system._instrumentor import SystemInstrumentor, watch_event_loop
from chat_turbo_metrics_system._readings import SPECS, MetricSpec, ProcessReadings, ProcessSample, psutil_sampler

__all__ = [
    "SPECS",
    "MetricSpec",
    "ProcessReadings",
    "ProcessSample",
    "SystemInstrumentor",
    "psutil_sampler",
    "watch_event_loop",
]
