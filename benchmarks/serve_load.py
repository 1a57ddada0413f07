"""Load on `ulixes-onnx serve`: concurrent uploads to a server on loopback, in waves.

usage: python benchmarks/serve_load.py [--uploads 50] [--waves 2] [--queue 8] [--out FILE.md]

Starts `python -m ulixes_onnx serve` on a free loopback port with a temp folder of its own (TMPDIR),
sends `--uploads` uploads of the sample astronaut at once per wave (`POST /v1/cloak`, waiting for the
result, then downloading it), samples the server's RSS every 50 ms, then stops it with SIGINT. Reports
requests, answers (200 or 503 + Retry-After), p50/p95 latency, the server's peak RSS and RSS after
each wave, and the files left in its temp folder after each wave and after shutdown.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import httpx2 as httpx
from PIL import Image

from ulixes_onnx.photos import samples

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Answer:
    status: int
    seconds: float


def astronaut_png() -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(samples.astronaut()).save(buffer, format="PNG")
    return buffer.getvalue()


async def upload_all(url: str, photo: bytes, count: int, timeout: float = 600.0) -> list[Answer]:
    """`count` uploads at once; a 200 is followed by the download of its result (which frees it)."""
    limits = httpx.Limits(max_connections=count, max_keepalive_connections=count)
    async with httpx.AsyncClient(base_url=url, timeout=timeout, limits=limits) as client:

        async def one(index: int) -> Answer:
            started = time.perf_counter()
            reply = await client.post("/v1/cloak", files={"photo": (f"load-{index}.png", photo)})
            if reply.status_code == 200:
                download = await client.get(reply.json()["links"]["result"])
                download.raise_for_status()
            elif reply.status_code == 503:
                assert int(reply.headers["retry-after"]) >= 1
            return Answer(reply.status_code, time.perf_counter() - started)

        return list(await asyncio.gather(*(one(index) for index in range(count))))


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


def files_under(folder: Path, baseline: frozenset[Path] = frozenset()) -> list[Path]:
    """Files under `folder`, except those in `baseline` (there before the server took a request: the
    Python start-up of some environments drops a file of its own in TMPDIR)."""
    return [path for path in folder.rglob("*") if path.is_file() and path not in baseline]


class RssSampler:
    """The RSS of a process, sampled in a thread; `peak` in bytes."""

    def __init__(self, pid: int, interval: float = 0.05) -> None:
        self.pid, self.interval, self.peak = pid, interval, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def current(self) -> int:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        return 0

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.peak = max(self.peak, self.current())
            except OSError:
                return
            time.sleep(self.interval)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--uploads", type=int, default=50)
    parser.add_argument("--waves", type=int, default=2)
    parser.add_argument("--queue", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    photo = astronaut_png()
    temp = Path(tempfile.mkdtemp(prefix="serve-load-"))
    command = [sys.executable, "-m", "ulixes_onnx", "serve", "--port", str(port)]
    command += ["--queue", str(args.queue), "--threads", str(args.threads)]
    server = subprocess.Popen(
        command,
        cwd=ROOT,
        env={**os.environ, "TMPDIR": str(temp)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    rows = []
    try:
        deadline = time.monotonic() + 300
        while True:
            try:
                if httpx.get(f"{url}/v1/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline or server.poll() is not None:
                raise SystemExit("the server did not start")
            time.sleep(0.2)
        baseline = frozenset(files_under(temp))
        with RssSampler(server.pid) as rss:
            ready_rss = rss.current()
            for wave in range(1, args.waves + 1):
                started = time.perf_counter()
                answers = asyncio.run(upload_all(url, photo, args.uploads))
                wall = time.perf_counter() - started
                rows.append((wave, answers, wall, rss.current(), len(files_under(temp, baseline))))
            peak = rss.peak
    finally:
        server.send_signal(signal.SIGINT)
        server.wait(timeout=300)
    left_after_shutdown = files_under(temp, baseline) + [path for path in temp.iterdir() if path.is_dir()]
    report = render(args, rows, ready_rss, peak, left_after_shutdown, server.returncode)
    print(report)
    if args.out:
        args.out.write_text(report)
    shutil.rmtree(temp)


def render(args, rows, ready_rss, peak, left_after_shutdown, exit_code) -> str:
    mb = 1 / 1e6
    lines = [
        "# `ulixes-onnx serve` under load",
        "",
        f"`python benchmarks/serve_load.py --uploads {args.uploads} --waves {args.waves} "
        f"--queue {args.queue} "
        f"--threads {args.threads}`: server on 127.0.0.1 with 1 worker and a queue of {args.queue}; each "
        f"wave sends {args.uploads} uploads of the 512x512 astronaut PNG at once (`POST /v1/cloak`, "
        "waiting for the result, then downloading it). Latency is from sending the upload to the answer "
        "(and download, for a 200). 2 shared CPU cores.",
        "",
        "| wave | requests | answered | 200 | 503 | other | p50 s | p95 s | p50 s of 200 | wall s "
        "| RSS after MB | temp files left |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for wave, answers, wall, rss_after, files_left in rows:
        statuses = [answer.status for answer in answers]
        seconds = [answer.seconds for answer in answers]
        ok = [answer.seconds for answer in answers if answer.status == 200]
        lines.append(
            f"| {wave} | {len(answers)} | {len(answers)} | {statuses.count(200)} | {statuses.count(503)} "
            f"| {sum(s not in (200, 503) for s in statuses)} | {percentile(seconds, 0.5):.2f} "
            f"| {percentile(seconds, 0.95):.2f} | {statistics.median(ok) if ok else float('nan'):.2f} "
            f"| {wall:.1f} | {rss_after * mb:.0f} | {files_left} |"
        )
    lines += [
        "",
        f"Server RSS when ready (default model loaded): {ready_rss * mb:.0f} MB; peak RSS over all waves "
        f"(sampled every 50 ms): {peak * mb:.0f} MB.",
        f"After SIGINT the server exited with code {exit_code} and left {len(left_after_shutdown)} files or "
        "folders in its temp folder.",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
