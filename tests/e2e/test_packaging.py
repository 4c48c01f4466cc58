"""The source root `ssl/` must never shadow the standard library's `ssl` module."""

import subprocess
import sys

from conftest import REPO, TINY_CONFIGS, sslvit


def test_no_init_in_source_root():
    assert not (REPO / "ssl" / "__init__.py").exists(), "ssl/__init__.py would shadow the stdlib ssl module"
    assert (REPO / "ssl" / "sslvit" / "__init__.py").exists()


def test_import_ssl_from_repo_root_is_stdlib():
    # `python -c` puts the current directory (the repo root, which holds ssl/) first on sys.path.
    code = "import ssl, urllib.request; print(ssl.__file__); print(hasattr(ssl, 'SSLContext'))"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    path, has_context = out.stdout.split()
    assert not path.startswith(str(REPO)), path
    assert has_context == "True"


def test_console_script_offers_fit_and_validate_only():
    out = sslvit("--help")
    assert out.returncode == 0, out.stderr
    assert "{fit,validate}" in out.stdout, out.stdout
    # `test` and `predict` would need a test_step / predict_step that no pretraining objective has
    out = sslvit("test", "--config", TINY_CONFIGS["mae"])
    assert out.returncode == 2 and "invalid choice: 'test'" in out.stderr, out.stderr[-2000:]
