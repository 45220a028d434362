"""examples/demo/client.js, the browser client module, type-checks with TypeScript's
checker over its JSDoc (``tsc --checkJs --strict``): no build step for its users."""

from __future__ import annotations

import subprocess

import pytest

from tests.servers import ROOT, require

TSC = ROOT / ".venv" / "node" / "node_modules" / ".bin" / "tsc"


@pytest.mark.slow
def test_the_browser_client_type_checks_strictly() -> None:
    require(TSC.exists(), "TypeScript is not installed (make test installs it with npm)")
    args = ["--allowJs", "--checkJs", "--noEmit", "--strict", "--target", "es2022"]
    args += ["--module", "es2022", "--lib", "es2022,dom", "examples/demo/client.js"]
    result = subprocess.run([str(TSC), *args], cwd=ROOT, capture_output=True, text=True)
    assert 0 == result.returncode, result.stdout + result.stderr
