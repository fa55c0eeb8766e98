"""Benchmarks in their released formats, official metrics and the evaluation runner."""
