"""Benchmarks: run each as ``python -m bench.<name>`` from the repository root.

Every script compares its cases side by side in one run (the machine is shared and small, so
numbers from separate runs are not comparable), prints Markdown tables, and ends with one JSON
line holding its figures. Results and their reading: BENCHMARKS.md.
"""

import os

# Ray starts each model replica with OMP_NUM_THREADS set to its num_cpus (1 by default), which
# also caps OpenBLAS. The bare models measured in this process must get the same thread
# budget, and it only takes effect if set before numpy is first imported: here, since
# ``python -m bench.x`` imports this package first. (Unset, OpenBLAS starts one thread per
# core, and on two cores that made the bare path ~10% slower.)
os.environ.setdefault(
    "OMP_NUM_THREADS",
    str(max(1, int(float(os.environ.get("FACESTREAM_RAY__MODEL_NUM_CPUS", "1"))))),
)
