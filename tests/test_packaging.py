"""
The wheel ships the dropin the way Twisted's plugin system needs it, and a
plain (non-editable) install into a fresh venv makes twistd list popgate.
"""

from __future__ import annotations

import os
import subprocess
import sys
import venv
import zipfile

import pytest

from tests.popgate_server import REPO

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(out), REPO],
                   check=True, timeout=300)
    (path,) = [p for p in out.iterdir() if p.name.endswith(".whl")]
    return path


def test_wheel_ships_dropin_without_package_markers(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    assert "twisted/plugins/popgate_plugin.py" in names
    assert "twisted/__init__.py" not in names
    assert "twisted/plugins/__init__.py" not in names
    assert not any(n.endswith("dropin.cache") for n in names)
    assert "popgate/pop3/protocol.py" in names
    # LANG's catalogs, read at start-up as they are (popgate/i18n/catalogs.py).
    assert "popgate/i18n/locale/popgate.pot" in names
    assert "popgate/i18n/locale/de/LC_MESSAGES/popgate.po" in names
    assert "popgate/i18n/locale/fr/LC_MESSAGES/popgate.po" in names
    assert not any(n.startswith("tests/") for n in names)


def test_fresh_venv_install_lists_popgate(wheel, tmp_path):
    env_dir = tmp_path / "venv"
    # No pip of its own (ensurepip takes seconds): the test venv's pip
    # installs into it (pip --python), the wheel and all its dependencies.
    venv.create(env_dir, with_pip=False)
    python = env_dir / "bin" / "python"
    # Nothing of the source tree (PYTHONPATH=. and the popgate.egg-info the
    # wheel build left there would look installed to pip and to twistd).
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "-q", str(wheel)],
                   check=True, timeout=600, cwd=tmp_path, env=env)
    result = subprocess.run([str(env_dir / "bin" / "twistd"), "--help"], capture_output=True,
                            text=True, timeout=60, cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stderr
    assert "popgate" in result.stdout
    helped = subprocess.run([str(env_dir / "bin" / "twistd"), "popgate", "--help"],
                            capture_output=True, text=True, timeout=60, cwd=tmp_path, env=env)
    assert "--store" in helped.stdout and "--pop3" in helped.stdout
    assert os.path.exists(env_dir / "bin" / "popgate")
