"""The set-up script picks the CPU build of torch wherever it runs."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "torch_source.sh"


def _source(env: dict[str, str]) -> str:
    return subprocess.run(["bash", str(SCRIPT)], env={**os.environ, "PYTHON": sys.executable, **env},
                          capture_output=True, text=True, timeout=120, check=True).stdout.strip()


def test_without_a_local_wheel_it_uses_the_cpu_index(tmp_path):
    # no find-links, no pip configuration, no network index: nothing local can be found
    env = {"PIP_FIND_LINKS": str(tmp_path), "PIP_CONFIG_FILE": os.devnull, "PIP_NO_INDEX": "1"}
    assert _source(env) == "cpu-index"


def test_with_a_local_cpu_wheel_it_uses_it(tmp_path):
    # a stand-in wheel of the pinned version, named as PyTorch names its CPU builds
    wheel = tmp_path / "torch-2.13.0+cpu-py3-none-any.whl"
    import zipfile

    with zipfile.ZipFile(wheel, "w") as z:
        z.writestr("torch-2.13.0+cpu.dist-info/METADATA", "Metadata-Version: 2.1\nName: torch\nVersion: 2.13.0+cpu\n")
        z.writestr("torch-2.13.0+cpu.dist-info/WHEEL", "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        z.writestr("torch-2.13.0+cpu.dist-info/RECORD", "")
    env = {"PIP_FIND_LINKS": str(tmp_path), "PIP_CONFIG_FILE": os.devnull}
    assert _source(env) == "local"
    env["TORCH_VERSION"] = "2.99.0"  # a pin with no local wheel
    assert _source({**env, "PIP_NO_INDEX": "1"}) == "cpu-index"
