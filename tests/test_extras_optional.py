"""The client and the framework integrations are optional extras: `import flashtalk` (and the framework-free
parts) never import websockets, livekit or pipecat, and an integration imported without its package says
in one line which extra to install. Each check runs in a fresh interpreter with the package blocked."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)


def test_core_imports_pull_in_no_extra():
    out = python(
        "import sys, flashtalk, flashtalk.client, flashtalk.integrations.avatar, "
        "flashtalk.integrations.engines\n"
        "print(sorted(m for m in ('websockets', 'livekit', 'pipecat', 'torch') if m in sys.modules))"
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize(
    "module, blocked, package, extra",
    [
        ("flashtalk.integrations.livekit", "livekit", "livekit-agents", "livekit"),
        ("flashtalk.integrations.pipecat", "pipecat", "pipecat-ai", "pipecat"),
    ],
)
def test_integration_without_its_package_names_the_extra(module, blocked, package, extra):
    out = python(
        f"import sys\nsys.modules[{blocked!r}] = None\n"
        f"try:\n    import {module}\nexcept ImportError as exc:\n    print(type(exc).__name__, exc)\n"
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == f"ImportError {module} needs {package}: pip install 'flashtalk[{extra}]'"


def test_client_without_websockets_names_the_extra():
    out = python(
        "import sys\nsys.modules['websockets'] = None\nimport asyncio\nfrom flashtalk import client\n"
        "opening = client.connect('ws://127.0.0.1:9/ws', portrait_id='demo')\n"
        "try:\n    asyncio.run(asyncio.wait_for(opening, 30))\n"
        "except client.FlashTalkError as exc:\n    print(exc)\n"
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "flashtalk.client needs websockets: pip install 'flashtalk[client]'"
