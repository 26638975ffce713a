"""The pipeline: provider and reader, fan-out and export workers, delta conversion, self-telemetry, registry."""
