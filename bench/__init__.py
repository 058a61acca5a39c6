"""Benchmarks for lorawf: ``python -m bench`` (see docs/bench.md).

Each case measures lorawf against the tool a user would otherwise pick (comfy-cli, curl) or against the
limit (the bare interpreter, the loopback), side by side in the same run, and reports ratios with the
targets of issue 6 beside them. Tests never assert wall time; this is where the numbers live.
"""
