"""Test helpers for services measured with chat_turbo_metrics; the fixtures are in :mod:`.plugin`."""

from chat_turbo_metrics_pytest._helpers import ManualClock, alert_state, assert_alert, sample_value

__all__ = ["ManualClock", "alert_state", "assert_alert", "sample_value"]
