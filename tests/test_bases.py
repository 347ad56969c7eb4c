"""The offline bases' bootstrap steps that need no engine (the bases themselves: tests/test_build_integration.py)."""

from __future__ import annotations

import pytest

from hpcimages.define.matrix import Base
from hpcimages.errors import BaseImageError
from hpcimages.images.bases import _install_pip, newest_wheel


def test_a_base_without_debians_pip_wheel_is_a_clear_error(tmp_path):
    (tmp_path / "usr/share/python-wheels").mkdir(parents=True)
    with pytest.raises(BaseImageError, match="python3-pip-whl put no pip wheel in /usr/share/python-wheels"):
        _install_pip(tmp_path, Base("hpcimages-base/python:3.13-trixie", "trixie"))


def test_the_newest_pip_wheel_is_chosen_by_version_not_by_name(tmp_path):
    for name in ("pip-9.0.1-py3-none-any.whl", "pip-25.1.1-py3-none-any.whl", "pip-23.0.1-py3-none-any.whl"):
        (tmp_path / name).touch()
    assert newest_wheel(sorted(tmp_path.glob("pip-*.whl"))).name == "pip-25.1.1-py3-none-any.whl"
