"""Drive Debian's headless chromium from tests: the DOM of a page after it rendered, or a screenshot.

Only the distribution's package is used (`apt-get install chromium`); nothing downloads a browser.
Without it the browser tests skip with the reason, except under CI (the `CI` variable is set),
where CI installs chromium and a missing browser is a failure.
"""

from __future__ import annotations

import os
import shutil
import signal
import struct
import subprocess
import tempfile
import zlib
from pathlib import Path

import pytest

TIMEOUT_S = 90
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-sync",
    "--disable-quic",
    "--disable-dev-shm-usage",
    "--hide-scrollbars",
    "--mute-audio",
)


class BrowserError(RuntimeError):
    """Chromium failed or did not finish in time; carries the end of its stderr."""


def chromium_path() -> str | None:
    """Debian's chromium launcher, or `chromium` on PATH; None when neither exists."""
    if os.access("/usr/bin/chromium", os.X_OK):
        return "/usr/bin/chromium"
    return shutil.which("chromium")


def require_chromium() -> str:
    """The chromium to run; skips the test when it is missing (fails instead when CI is set)."""
    path = chromium_path()
    if path is None:
        reason = "chromium is not installed: run `apt-get install -y chromium` (Debian's package) to run the browser tests"
        if os.environ.get("CI"):
            pytest.fail(reason + " (CI is set, and CI installs chromium)")
        pytest.skip(reason)
    return path


def _run(args: list[str], timeout_s: float) -> bytes:
    """Run chromium once with a fresh profile; its stdout. Kills its process group on timeout."""
    binary = require_chromium()
    with tempfile.TemporaryDirectory(prefix="chromium-profile-") as profile:
        cmd = [binary, *FLAGS, f"--user-data-dir={profile}", *args]
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
        try:
            out, err = proc.communicate(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # the group holds only this chromium and its helpers
            out, err = proc.communicate()
            raise BrowserError(f"chromium did not finish within {timeout_s:g} s: {_tail(err)}") from None
        if proc.returncode != 0:
            raise BrowserError(f"chromium exited with status {proc.returncode}: {_tail(err)}")
        return out


def _tail(err: bytes) -> str:
    return err.decode("utf-8", "replace")[-2000:].strip()


def _target(page: Path | str) -> str:
    """A file to open, or an http(s) URL as it is."""
    return page if isinstance(page, str) else page.resolve().as_uri()


def dump_dom(page: Path | str, *, timeout_s: float = TIMEOUT_S) -> str:
    """The page's DOM as chromium serialises it after loading (`--dump-dom`)."""
    return _run(["--dump-dom", _target(page)], timeout_s).decode("utf-8")


def screenshot(page: Path | str, out: Path, *, width: int = 1400, height: int = 1000, scale: float = 1.0,
               timeout_s: float = TIMEOUT_S) -> Path:
    """A PNG of the page's first `width` x `height` CSS pixels (times `scale` device pixels)."""
    out = out.resolve()
    out.unlink(missing_ok=True)
    _run([f"--screenshot={out}", f"--window-size={width},{height}", f"--force-device-scale-factor={scale:g}",
          _target(page)], timeout_s)
    if not out.is_file():
        raise BrowserError(f"chromium exited normally but wrote no screenshot at {out}")
    return out


def png_facts(path: Path) -> tuple[int, int, int]:
    """(width, height, distinct byte values in the decompressed image data) of a PNG."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", data[16:24])
    idat, pos = b"", 8
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        if kind == b"IDAT":
            idat += data[pos + 8:pos + 8 + length]
        pos += 12 + length
    return width, height, len(set(zlib.decompress(idat)))


def main(argv: list[str]) -> int:
    """`python tests/browser.py PAGE.html OUT.png [WIDTHxHEIGHT] [SCALE]`: a screenshot for the docs."""
    if len(argv) not in (2, 3, 4) or chromium_path() is None:
        print("usage: python tests/browser.py PAGE.html OUT.png [WIDTHxHEIGHT] [SCALE]  (needs chromium)")
        return 2
    width, height = (int(n) for n in (argv[2] if len(argv) > 2 else "1400x1000").split("x"))
    out = screenshot(Path(argv[0]), Path(argv[1]), width=width, height=height, scale=float(argv[3]) if len(argv) > 3 else 1.0)
    print(out)
    return 0


if __name__ == "__main__":
    import sys

    sys.exit(main(sys.argv[1:]))
