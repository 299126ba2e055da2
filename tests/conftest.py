import os
import sys
import sysconfig

import pytest
import trustme


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


@pytest.fixture(scope="session")
def pki(tmp_path_factory):
    """A test CA and a server certificate for 127.0.0.1/localhost: (ca, folder with server.crt,
    server.key, ca.crt)."""
    d = tmp_path_factory.mktemp("pki")
    ca = trustme.CA()
    server = ca.issue_cert("127.0.0.1", "localhost")
    server.private_key_pem.write_to_path(str(d / "server.key"))
    with open(d / "server.crt", "wb") as f:
        for pem in server.cert_chain_pems:
            f.write(pem.bytes())
    ca.cert_pem.write_to_path(str(d / "ca.crt"))
    return ca, d
