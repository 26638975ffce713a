"""Recording internals: the fast and sdk front ends, the producer seam, input guards, instruments and names."""
