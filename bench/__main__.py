"""``python -m bench``: every stage's speed and memory on this device (bench/run.py)."""

from bench.run import main

main()
