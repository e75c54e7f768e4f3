"""Benchmarks: ``mesh bench``, its targets, scenarios, servers, brokers and plots."""
