"""The pipeline: provider and reader, the push fan-out, temporality conversion, the exporter registry."""
