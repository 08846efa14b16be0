"""invoke entry points of a checkout: the task collection of bench/cli.py (tasks live there, in the installed
package; `genbench TASK ...` runs the same tasks from any directory)."""

from bench.cli import (  # noqa: F401
    bench,
    fid,
    flow_sizes,
    jacobi_bench,
    kernels,
    namespace,
    parity,
    recipes,
    report,
    study,
    test,
)

ns = namespace
