#!/usr/bin/env python3
"""Counts the lines of a crate's `src/`, as `wc -l` does, and what they are.

Each line of each `.rs` file is one of: a unit test (from a `#[cfg(test)]` attribute on a
module to the end of the file, where the crate keeps its test modules), documentation (`///`
or `//!`), a comment (`//`), a blank line, or code (everything else, attributes and string
continuations included). Prints one row per file, largest first, then the totals.

    python3 scripts/src-lines.py                    # the core
    python3 scripts/src-lines.py crates/smol-offload-remote
"""

import os
import sys

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
KINDS = ("code", "docs", "comments", "blank", "tests")


def count(path):
    """The lines of one file, by kind."""
    with open(path, encoding="utf-8") as file:
        lines = file.read().splitlines()
    counts = dict.fromkeys(KINDS, 0)
    in_tests = False
    for number, line in enumerate(lines):
        text = line.strip()
        following = lines[number + 1].strip() if number + 1 < len(lines) else ""
        if text == "#[cfg(test)]" and following.startswith("mod "):
            in_tests = True
        if in_tests:
            counts["tests"] += 1
        elif not text:
            counts["blank"] += 1
        elif text.startswith(("///", "//!")):
            counts["docs"] += 1
        elif text.startswith("//"):
            counts["comments"] += 1
        else:
            counts["code"] += 1
    return counts


def main():
    crate = sys.argv[1] if len(sys.argv) > 1 else os.path.join("crates", "smol-offload")
    src = os.path.join(ROOT, crate, "src")
    rows = []
    for directory, _, files in os.walk(src):
        for name in files:
            if name.endswith(".rs"):
                path = os.path.join(directory, name)
                rows.append((os.path.relpath(path, src), count(path)))
    rows.sort(key=lambda row: -sum(row[1].values()))
    header = f"{'file':<34}" + "".join(f"{kind:>9}" for kind in KINDS) + f"{'total':>9}"
    print(header)
    totals = dict.fromkeys(KINDS, 0)
    for name, counts in rows:
        for kind in KINDS:
            totals[kind] += counts[kind]
        cells = "".join(f"{counts[kind]:>9}" for kind in KINDS)
        print(f"{name:<34}{cells}{sum(counts.values()):>9}")
    cells = "".join(f"{totals[kind]:>9}" for kind in KINDS)
    print(f"{'total':<34}{cells}{sum(totals.values()):>9}")


if __name__ == "__main__":
    main()
