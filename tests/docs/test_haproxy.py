"""deploy/haproxy: the configuration as shipped passes ``haproxy -c``, and its README documents every
environment variable it reads, with the default the file really has. (tests/scaleout runs it.)"""

from __future__ import annotations

import re
import subprocess

from tests.docs.conftest import REPO
from tests.scaleout.helpers import HAPROXY_CFG, VARIABLE_RE, haproxy_binary

README = REPO / "deploy" / "haproxy" / "README.md"


def test_the_shipped_config_is_valid() -> None:
    result = subprocess.run([haproxy_binary(), "-c", "-f", str(HAPROXY_CFG)], capture_output=True, text=True,
                            timeout=60, env={"PATH": "/usr/bin:/bin"})
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_variable_is_documented_with_its_default() -> None:
    variables = dict(VARIABLE_RE.findall(HAPROXY_CFG.read_text(encoding="utf-8")))
    documented = dict(re.findall(r"^\| `(OVMS_GRAPH_\w+)` \| `([^`]*)` \|", README.read_text(encoding="utf-8"),
                                 re.MULTILINE))
    assert len(variables) >= 8
    assert documented == variables
