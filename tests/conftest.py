import os
import sys
import sysconfig

import pytest


@pytest.fixture
def console_script():
    """The installed ``fluent-ld`` console script, next to the running interpreter."""
    scripts = sysconfig.get_path("scripts")
    path = os.path.join(scripts, "fluent-ld")
    if not os.path.exists(path):
        pytest.fail(f"fluent-ld console script not installed at {path}: pip install -e .")
    return path


@pytest.fixture
def python():
    return sys.executable
