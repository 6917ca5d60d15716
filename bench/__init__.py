"""Benchmarks: `make bench` (bench/run.py) and `make bench-wechat` (bench/wechat_ack.py)."""
