"""XLA_FLAGS for the tests' processes, in-process and the programs they start.

The tests' programs are tiny, so compiling them dominates their time, and code compiled
without LLVM's expensive passes runs them just as fast: a smoke training run took 44 s
instead of 61 s with these flags (docs/performance.md, "Tests"). Runs that a test compares
are started with the same flags, so exact comparisons stay exact.
"""

FAST_COMPILE = "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"


def xla_flags(devices: int | None = None) -> str:
    """XLA_FLAGS for a test process: fast compiles and, when given, `devices` host devices."""
    count = [f"--xla_force_host_platform_device_count={devices}"] if devices else []
    return " ".join([*count, FAST_COMPILE])
