"""Pre-fork servers: one Prometheus scrape for every process of a service (see :mod:`._session`)."""
