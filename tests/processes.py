"""Real batchrun processes in tests: waiting for one with a bound, never leaving it behind."""

from __future__ import annotations

import subprocess


def finish(proc: subprocess.Popen[bytes], timeout: float = 90) -> tuple[int, str]:
    """Its exit code and stderr; killed (and reaped) if it outlives `timeout`."""
    try:
        _, stderr = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return proc.returncode, stderr.decode()
