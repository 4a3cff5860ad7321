"""Benchmarks: speed and memory of the models and gradient strategies (``memtx bench``)."""
