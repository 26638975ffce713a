"""Collection: what the recorders and the SDK hold becomes one ``MetricsData``, post-processed once, walked one way."""
