"""Benchmarks: `python -m bench [name ...]` runs bench/<name>.py modules and writes bench/REPORT.md."""
