"""Fixtures for the HTTP instrumentor's tests."""
