"""Run a command and measure its own peak resident memory.

Linux carries a process's memory high-water mark across fork and exec, so a command started straight
from the test process (which holds models and grows during the suite) would report the test process's
peak as its own. A tiny launcher, started first, runs the command as its child and reports that
child's peak alone.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import IO

_LAUNCHER = """
import os, subprocess, sys
process = subprocess.Popen(sys.argv[2:])
_, status, usage = os.wait4(process.pid, 0)
with open(sys.argv[1], "w") as report:
    report.write(f"{os.waitstatus_to_exitcode(status)} {usage.ru_maxrss}")
"""


def run_measuring_peak_rss(command: list[str], folder: Path, stdout: IO, stderr: IO) -> tuple[int, int]:
    """The command's exit code and peak resident memory in KiB; its output goes to `stdout`/`stderr`."""
    report = folder / "peak-rss.txt"
    subprocess.run([sys.executable, "-c", _LAUNCHER, str(report), *command], stdout=stdout, stderr=stderr)
    code, peak = report.read_text().split()
    return int(code), int(peak)
