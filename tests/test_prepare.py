"""tests/prepare.sh: the deb-src lines it adds on Debian and Ubuntu, and its checks."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

PREPARE = Path(__file__).parent / "prepare.sh"

UBUNTU_24_SOURCES = """\
Types: deb
URIs: http://archive.ubuntu.com/ubuntu/
Suites: noble noble-updates noble-backports
Components: main restricted universe multiverse
Signed-By: /usr/share/keyrings/ubuntu-archive-keyring.gpg

Types: deb
URIs: http://security.ubuntu.com/ubuntu/
Suites: noble-security
Components: main restricted universe multiverse
Signed-By: /usr/share/keyrings/ubuntu-archive-keyring.gpg

Types: deb
URIs: http://archive.ubuntu.com/ubuntu/
Suites: noble-proposed
Components: main
Enabled: no
"""

UBUNTU_22_LIST = """\
# See http://help.ubuntu.com/community/UpgradeNotes
deb http://archive.ubuntu.com/ubuntu/ jammy main restricted
# deb-src http://archive.ubuntu.com/ubuntu/ jammy main restricted
deb [signed-by=/etc/apt/keyrings/u.gpg] http://security.ubuntu.com/ubuntu jammy-security main
"""

THIRD_PARTY_LIST = "deb https://packages.cloud.google.com/apt cloud-sdk main\n"


def _deb_src(root: Path) -> str:
    proc = subprocess.run(
        ["bash", str(PREPARE), "--deb-src"],
        env={**os.environ, "APT_ROOT": str(root)},
        capture_output=True,
        text=True,
        check=True,
    )
    return proc.stdout


def _stanzas(text: str) -> list[dict[str, str]]:
    return [
        dict(line.split(": ", 1) for line in block.splitlines() if not line.startswith("#"))
        for block in text.strip().split("\n\n")
        if block.strip()
    ]


def test_deb_src_for_ubuntu_deb822_sources(tmp_path: Path) -> None:
    folder = tmp_path / "etc/apt/sources.list.d"
    folder.mkdir(parents=True)
    (folder / "ubuntu.sources").write_text(UBUNTU_24_SOURCES)
    (folder / "google.list").write_text(THIRD_PARTY_LIST)
    stanzas = _stanzas(_deb_src(tmp_path))
    assert [s["Suites"] for s in stanzas] == [
        "noble noble-updates noble-backports",
        "noble-security",
    ]
    assert {s["Types"] for s in stanzas} == {"deb-src"}
    assert all(s["Signed-By"].endswith("ubuntu-archive-keyring.gpg") for s in stanzas)


def test_deb_src_for_one_line_sources_list(tmp_path: Path) -> None:
    (tmp_path / "etc/apt/sources.list.d").mkdir(parents=True)
    (tmp_path / "etc/apt/sources.list").write_text(UBUNTU_22_LIST)
    (tmp_path / "etc/apt/sources.list.d/google.list").write_text(THIRD_PARTY_LIST)
    assert _stanzas(_deb_src(tmp_path)) == [
        {
            "Types": "deb-src",
            "URIs": "http://archive.ubuntu.com/ubuntu/",
            "Suites": "jammy",
            "Components": "main restricted",
        },
        {
            "Types": "deb-src",
            "URIs": "http://security.ubuntu.com/ubuntu",
            "Suites": "jammy-security",
            "Components": "main",
            "Signed-By": "/etc/apt/keyrings/u.gpg",
        },
    ]


def test_no_distribution_source_gives_nothing(tmp_path: Path) -> None:
    (tmp_path / "etc/apt/sources.list.d").mkdir(parents=True)
    (tmp_path / "etc/apt/sources.list.d/google.list").write_text(THIRD_PARTY_LIST)
    assert _deb_src(tmp_path).strip() == ""


def test_check_names_a_missing_compiler(tmp_path: Path) -> None:
    # A PATH with the shell tools prepare.sh uses, but no clang.
    for tool in ("bash", "grep", "id", "python3"):
        found = shutil.which(tool)
        assert found is not None
        (tmp_path / tool).symlink_to(found)
    env = {**os.environ, "PATH": str(tmp_path)}
    proc = subprocess.run(
        ["bash", str(PREPARE), "--check", "clang"], env=env, capture_output=True, text=True
    )
    assert (proc.returncode, proc.stdout.strip()) == (1, "clang is not installed")
