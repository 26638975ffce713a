"""Exposition: Prometheus text, self-describing records, and the snapshot API."""
