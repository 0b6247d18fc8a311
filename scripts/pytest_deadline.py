"""A per-test time limit for machines without pytest-timeout (the offline GPU machine):
`python -m pytest -p pytest_deadline` with scripts/ on PYTHONPATH (scripts/gpu_check.sh does
this when pytest_timeout cannot be imported).

ARWRAP_TEST_TIMEOUT_S (default 120): after that long a test fails with a TimeoutError
raised by SIGALRM, and the run goes on with the next test. A test stuck in native code
that never returns to Python does not see the signal: 30 s later faulthandler prints
every thread's stack and ends the process, so the log still names the test and where it
hung instead of the whole step running into its outer limit silently.
"""
import faulthandler
import os
import signal
import sys

import pytest

LIMIT_S = float(os.environ.get("ARWRAP_TEST_TIMEOUT_S", "120"))


def _on_alarm(signum, frame):
    raise TimeoutError(f"test exceeded ARWRAP_TEST_TIMEOUT_S={LIMIT_S:.0f} s")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    previous = signal.signal(signal.SIGALRM, _on_alarm)
    signal.setitimer(signal.ITIMER_REAL, LIMIT_S)
    faulthandler.dump_traceback_later(LIMIT_S + 30, exit=True, file=sys.stderr)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
        faulthandler.cancel_dump_traceback_later()


def pytest_report_header(config):
    return f"pytest_deadline: {LIMIT_S:.0f} s per test (SIGALRM), process dump and exit at +30 s"
