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


def test_uv_is_told_pips_indexes_find_links_and_constraints(tmp_path):
    """setup.sh installs with uv from where pip would: pip's configuration as uv's flags, a
    PIP_* variable winning over the file, as in pip."""
    conf = tmp_path / "pip.conf"
    conf.write_text("[global]\nindex-url = file:///i/simple\nextra-index-url = file:///a/simple file:///b/simple\n"
                    "find-links = /wheels-from-file\nconstraint = /c.txt\n", encoding="utf-8")
    env = {**os.environ, "PIP_CONFIG_FILE": str(conf), "PIP_FIND_LINKS": "/wheels-from-env"}
    for name in ("PIP_EXTRA_INDEX_URL", "PIP_INDEX_URL", "PIP_CONSTRAINT"):
        env.pop(name, None)
    out = subprocess.run([sys.executable, str(SCRIPT.parent / "pip_config_for_uv.py")], env=env, capture_output=True,
                         text=True, timeout=120, check=True).stdout.split("\n")
    pairs = sorted(zip(out[0::2], out[1::2]))
    assert pairs == [("--constraint", "/c.txt"), ("--extra-index-url", "file:///a/simple"),
                     ("--extra-index-url", "file:///b/simple"), ("--find-links", "/wheels-from-env"),
                     ("--index-url", "file:///i/simple")]
