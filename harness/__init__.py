"""What `make up`, the tests and the benchmarks share to run real parts of the facility on this
machine (no pytest in it)."""


class HarnessError(AssertionError):
    """A real part would not start or answer. An AssertionError, so that pytest reports it as the
    test's failure with this message, and a script (ci/up, bench/) dies showing it."""
