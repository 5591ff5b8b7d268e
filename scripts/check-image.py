#!/usr/bin/env python3
"""Check that the Dockerfile ships what the code and the chart run.

- its `cargo build` is --release --locked and names packages (-p);
- the binaries it copies from target/release/ are exactly the bin targets of
  those packages (cargo metadata);
- every /usr/local/bin/<program> that the operator's pods (resources.rs) or
  the chart's templates run is one of them.
"""

import json
import re
import subprocess
import sys
from pathlib import Path

RUNNERS = [Path("operator/src/resources.rs"), *sorted(Path("charts/aspen-operator/templates").glob("*.yaml"))]


def main() -> int:
    errors = []
    dockerfile = Path("Dockerfile").read_text()
    build = re.search(r"cargo build([^\n]*)", dockerfile)
    if not build:
        print("error: Dockerfile: no cargo build")
        return 1
    flags = build.group(1).split()
    for flag in ("--release", "--locked"):
        if flag not in flags:
            errors.append(f"Dockerfile: cargo build without {flag}")
    packages = {flags[i + 1] for i, flag in enumerate(flags[:-1]) if flag == "-p"}
    copied = set(re.findall(r"target/release/([\w-]+)", dockerfile))

    metadata = json.loads(
        subprocess.run(
            ["cargo", "metadata", "--no-deps", "--format-version", "1", "--locked"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
    )
    known = {package["name"] for package in metadata["packages"]}
    for package in sorted(packages - known):
        errors.append(f"Dockerfile: builds -p {package}, which is no workspace package")
    bins = {
        target["name"]
        for package in metadata["packages"]
        if package["name"] in packages
        for target in package["targets"]
        if "bin" in target["kind"]
    }
    if copied != bins:
        errors.append(
            f"Dockerfile copies {sorted(copied)} but the packages it builds have the binaries {sorted(bins)}"
        )
    for path in RUNNERS:
        for program in sorted(set(re.findall(r"/usr/local/bin/([\w-]+)", path.read_text()))):
            if program not in copied:
                errors.append(f"{path} runs /usr/local/bin/{program}, which the Dockerfile does not ship")

    for error in errors:
        print(f"error: {error}")
    print(f"image: {', '.join(sorted(copied))} from packages {', '.join(sorted(packages))}: {len(errors)} errors")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
