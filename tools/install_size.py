"""Disk size of an installation, per distribution, as the README's Dependencies table reports it.

Run it with the python of the environment to measure, e.g. in a fresh virtualenv:

    python3 -m venv /tmp/venv-size && /tmp/venv-size/bin/pip install .
    /tmp/venv-size/bin/python tools/install_size.py

Each distribution's size is the sum of the files its RECORD lists (compiled `.pyc` files included once
Python has written them); the total is every file under site-packages.
"""

from __future__ import annotations

import argparse
import sysconfig
from importlib import metadata
from pathlib import Path


def distribution_bytes(distribution: metadata.Distribution) -> int:
    total = 0
    for file in distribution.files or []:
        path = Path(distribution.locate_file(file))
        if path.is_file():
            total += path.stat().st_size
    return total


def folder_bytes(folder: Path) -> int:
    return sum(path.stat().st_size for path in folder.rglob("*") if path.is_file() and not path.is_symlink())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--top", type=int, default=20, help="How many distributions to list.")
    arguments = parser.parse_args()
    site_packages = Path(sysconfig.get_paths()["purelib"])
    sizes = sorted(
        ((distribution_bytes(dist), dist.metadata["Name"]) for dist in metadata.distributions()),
        reverse=True,
    )
    print(f"site-packages {site_packages}: {folder_bytes(site_packages) / 1e6:.0f} MB")
    print("| distribution | MB |\n|---|---|")
    for size, name in sizes[: arguments.top]:
        print(f"| {name} | {size / 1e6:.1f} |")
    rest = sizes[arguments.top :]
    if rest:
        print(f"| {len(rest)} others | {sum(size for size, _ in rest) / 1e6:.1f} |")


if __name__ == "__main__":
    main()
