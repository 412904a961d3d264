"""The wheel carries the scenarios and backend descriptors, and the installed kit finds them."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_wheel_ships_the_data_and_the_installed_kit_finds_it(tmp_path: Path) -> None:
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), str(ROOT)],
        check=True,
    )
    (wheel,) = tmp_path.glob("zart_ref-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        archive.extractall(tmp_path / "site")
    for path in ROOT.glob("scenarios/*.toml"):
        assert f"zart_conformance/_data/scenarios/{path.name}" in names
    for path in ROOT.glob("backends/*.toml"):
        assert f"zart_conformance/_data/backends/{path.name}" in names
    assert any(n.endswith("entry_points.txt") for n in names)
    # Import from the unpacked wheel, far from the checkout: the data must come from inside it.
    probe = (
        "import zart_conformance, zart_conformance.data as d, zart_conformance.scenario as s;"
        "print(zart_conformance.__file__); print(len(s.load_all(d.scenarios_dir())));"
        "print(d.backends_dir())"
    )
    out = subprocess.run(
        [
            sys.executable,
            "-I",
            "-c",
            f"import sys; sys.path.insert(0, {str(tmp_path / 'site')!r}); {probe}",
        ],
        capture_output=True,
        text=True,
        check=True,
        cwd=tmp_path,
    ).stdout.split("\n")
    assert out[0].startswith(str(tmp_path / "site"))
    assert int(out[1]) == len(list(ROOT.glob("scenarios/*.toml")))
    assert out[2] == str(tmp_path / "site" / "zart_conformance" / "_data" / "backends")
