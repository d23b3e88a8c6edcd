"""The applications: the `osteotel` command, the demo, offline analysis, the report, the
Grafana boards, the benchmarks, the broker's configuration and the local server launchers.

The top floor (docs/architecture.md): it may import anything; nothing below imports it.
"""
