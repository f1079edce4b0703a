"""Throwaway certificates for the TLS tests, made at test time with the `openssl` command line
(the `cryptography` package is not installed): a CA, a server cert for localhost/127.0.0.1, a
client cert from that CA, and a client cert from a second, untrusted CA. Never committed."""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

OPENSSL = shutil.which("openssl")


@dataclass(frozen=True)
class Pki:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    rogue_ca: Path  # a CA nobody trusts
    rogue_cert: Path  # signed by rogue_ca
    rogue_key: Path


def _run(*args: str, cwd: Path) -> None:
    assert OPENSSL is not None
    done = subprocess.run([OPENSSL, *args], cwd=cwd, capture_output=True, text=True, timeout=60)
    if done.returncode != 0:
        raise RuntimeError(f"openssl {' '.join(args)} failed: {done.stderr}")


def _ca(folder: Path, name: str) -> tuple[Path, Path]:
    key, cert = folder / f"{name}.key", folder / f"{name}.pem"
    _run(
        "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
        "-keyout", key.name, "-out", cert.name, "-days", "2", "-subj", f"/CN={name}",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        cwd=folder,
    )  # fmt: skip
    return cert, key


def _leaf(folder: Path, name: str, ca: tuple[Path, Path], extensions: str) -> tuple[Path, Path]:
    key, csr, cert, ext = (folder / f"{name}{s}" for s in (".key", ".csr", ".pem", ".ext"))
    ext.write_text(extensions)
    _run(
        "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
        "-keyout", key.name, "-out", csr.name, "-subj", f"/CN={name}",
        cwd=folder,
    )  # fmt: skip
    _run(
        "x509", "-req", "-in", csr.name, "-CA", ca[0].name, "-CAkey", ca[1].name,
        "-CAcreateserial", "-out", cert.name, "-days", "2", "-extfile", ext.name,
        cwd=folder,
    )  # fmt: skip
    return cert, key


def make_pki(folder: Path) -> Pki:
    """All the files, in `folder`; skips the test when there is no openssl binary."""
    if OPENSSL is None:
        pytest.skip("the openssl command is not installed; cannot make test certificates")
    folder.mkdir(parents=True, exist_ok=True)
    ca = _ca(folder, "radflow-test-ca")
    rogue_ca = _ca(folder, "rogue-ca")
    server = _leaf(
        folder,
        "localhost",
        ca,
        "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n",
    )
    client = _leaf(folder, "his-client", ca, "extendedKeyUsage=clientAuth\n")
    rogue = _leaf(folder, "rogue-client", rogue_ca, "extendedKeyUsage=clientAuth\n")
    return Pki(ca[0], server[0], server[1], client[0], client[1], rogue_ca[0], rogue[0], rogue[1])
