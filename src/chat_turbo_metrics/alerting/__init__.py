"""Alerting: rules evaluated against the pipeline's data, alert lifecycle, notifications."""
