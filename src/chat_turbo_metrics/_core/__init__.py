"""The core every layer stands on: configuration, naming, value guards, the fork registry, OpenTelemetry compat."""
