"""A real headless Chromium (Debian's chromium + chromium-driver) driven by Selenium.

``trust``: a CA certificate the browser trusts for HTTPS, as an operator's browser would after
importing it: Chromium on Linux reads its trust from the NSS database in ``$HOME/.pki/nssdb``,
so the browser runs with a home of its own whose database holds that CA (made with NSS's
``certutil``, Debian's libnss3-tools). Certificate errors are never ignored.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tests.peers import _missing

CHROMIUM_ARGS = ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--no-first-run", "--window-size=1400,1000")


def _home_trusting(ca_file: Path, home: Path) -> None:
    certutil = shutil.which("certutil")
    if certutil is None:
        _missing("certutil not installed (apt-get install libnss3-tools)")
    nssdb = home / ".pki" / "nssdb"
    nssdb.mkdir(parents=True)
    for args in (["-N", "--empty-password"], ["-A", "-n", "mgw fleet CA", "-t", "C,,", "-i", str(ca_file)]):
        subprocess.run([certutil, "-d", f"sql:{nssdb}", *args], check=True, capture_output=True, timeout=60)  # noqa: S603


@contextmanager
def chromium(trust: Path | None = None) -> Iterator[Any]:
    chrome = shutil.which("chromium") or "/usr/bin/chromium"
    driver_bin = shutil.which("chromedriver") or "/usr/bin/chromedriver"
    if not shutil.which(chrome) or not shutil.which(driver_bin):
        _missing("chromium / chromium-driver not installed (apt-get install chromium chromium-driver)")
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        _missing("selenium not installed (pip install -e .[test])")
    options = webdriver.ChromeOptions()
    options.binary_location = chrome
    for arg in CHROMIUM_ARGS:
        options.add_argument(arg)
    with tempfile.TemporaryDirectory(prefix="mgw-chromium-") as home:
        env = dict(os.environ)
        if trust is not None:
            _home_trusting(trust, Path(home))
            env["HOME"] = home
        driver = webdriver.Chrome(service=Service(driver_bin, env=env), options=options)
        try:
            yield driver
        finally:
            driver.quit()
