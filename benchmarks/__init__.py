"""Speed and memory benchmarks of the measurement path (not part of the default test run; see docs/benchmarks.md)."""
