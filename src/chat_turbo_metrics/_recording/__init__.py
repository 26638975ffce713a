"""Recording: the fast path (cells and streams, handles, bundles), the SDK path, instruments, idle-series eviction."""
