"""The parts of ``scripts/benchmark.py``: the processes it starts
(`processes`), the workloads and their goals (`scenarios`), and what it
prints and draws (`report`, `png`).  Standard library only."""
