"""Prints pip's configured indexes, find-links and constraints as uv's command-line flags, one
argument a line (scripts/setup.sh installs with uv as pip would have, from the same places).

Reads ``python -m pip config list`` (files and PIP_* variables alike); a variable wins over a
file, as in pip.
"""

from __future__ import annotations

import re
import subprocess
import sys

FLAGS = {"index-url": "--index-url", "extra-index-url": "--extra-index-url", "find-links": "--find-links",
         "constraint": "--constraint"}


def main() -> int:
    listed = subprocess.run([sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True, check=True)
    values: dict[str, tuple[bool, str]] = {}
    for line in listed.stdout.splitlines():
        found = re.fullmatch(r"(?P<scope>[^.]*)\.(?P<key>[\w-]+)='(?P<value>.*)'", line.strip())
        if not found or found["key"] not in FLAGS:
            continue
        from_env = found["scope"] == ":env:"
        if found["key"] not in values or from_env:
            values[found["key"]] = (from_env, found["value"])
    for key, (_, value) in values.items():
        for item in value.split():
            print(FLAGS[key])
            print(item)
    return 0


if __name__ == "__main__":
    sys.exit(main())
