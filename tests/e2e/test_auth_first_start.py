"""The embedded default's first start, on radflow's own API process: with no user at all it
creates `admin` with a random one-time password and a TOTP secret, printed once on its stderr;
that password must be changed before any token is issued; a restart prints nothing new."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pyotp

from tests.conftest import ROOT, free_port

NEW_PASSWORD = "a new long password of my own"


def start_api(data_dir: Path, port: int, log: Path) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "RADFLOW_DATA_DIR": str(data_dir),
        "RADFLOW_HTTP_PORT": str(port),
        "RADFLOW_TEMPORAL_ADDRESS": "127.0.0.1:1",  # not needed to sign in
        "PYTHONPATH": str(ROOT),
    }
    with open(log, "ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "api.cli", "api"], env=env, cwd=ROOT, stdout=out, stderr=out
        )


def wait_for(url: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            httpx.get(url, timeout=1)
            return
        except httpx.TransportError:
            time.sleep(0.1)
    raise TimeoutError(url)


def stop(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(15)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def test_first_start_prints_a_one_time_admin_password_that_must_be_changed(tmp_path: Path) -> None:
    data_dir, log, port = tmp_path / "var", tmp_path / "api.log", free_port()
    base = f"http://127.0.0.1:{port}"
    api = start_api(data_dir, port, log)
    try:
        wait_for(base + "/openapi.json")
        printed = log.read_text()
        password = next(
            line.split(": ", 1)[1] for line in printed.splitlines() if "one-time password:" in line
        )
        secret = pyotp.parse_uri(
            next(line.split(": ", 1)[1] for line in printed.splitlines() if "otpauth://" in line)
        ).secret
        assert len(password) >= 16 and printed.count("one-time password:") == 1
        totp = pyotp.TOTP(secret)

        first = httpx.post(
            base + "/api/auth/token", data={"username": "admin", "password": password, "otp": totp.now()}
        )
        assert first.status_code == 403 and "password change required" in first.json()["detail"]
        changed = httpx.post(
            base + "/api/auth/password",
            data={
                "username": "admin",
                "password": password,
                "new_password": NEW_PASSWORD,
                "otp": totp.at(time.time() + 30),  # the current code was just spent
            },
        )
        assert changed.status_code == 200, changed.text
        # both codes of this half-minute are spent: the old password is what is checked first
        old = httpx.post(base + "/api/auth/token", data={"username": "admin", "password": password})
        assert old.status_code == 401 and old.json()["detail"] == "invalid user name or password"
        listed = subprocess.run(
            [sys.executable, "-m", "api.cli", "users", "list", "--json"],
            env={**os.environ, "RADFLOW_DATA_DIR": str(data_dir), "PYTHONPATH": str(ROOT)},
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
        )
        (admin,) = json.loads(listed.stdout)
        assert admin["roles"] == ["admin"] and admin["mfa"] and not admin["must_change_password"]
    finally:
        stop(api)

    again = start_api(data_dir, port, log)
    try:
        wait_for(base + "/openapi.json")
        assert log.read_text().count("one-time password:") == 1  # nothing new at the next start
    finally:
        stop(again)
