"""TLS contexts for MLLP (inbound listener and outbound clients), built from PEM files.

Certificates and keys are read when the context is built, so a wrong path or a key that
does not match its certificate fails at start with the file named, not at the first handshake.
"""

from __future__ import annotations

import ssl
from pathlib import Path


class TlsConfigError(ValueError):
    """A certificate, key or CA file could not be used; the message names the file."""


def _readable(path: Path | str, what: str) -> Path:
    file = Path(path)
    try:
        with file.open("rb") as handle:
            handle.read(1)
    except OSError as error:
        raise TlsConfigError(f"TLS {what} {file}: cannot read ({error.strerror})") from error
    return file


def _load_chain(context: ssl.SSLContext, cert: Path | str, key: Path | str | None) -> None:
    cert_file = _readable(cert, "certificate")
    key_file = _readable(key, "key") if key is not None else None
    try:
        context.load_cert_chain(certfile=cert_file, keyfile=key_file)
    except ssl.SSLError as error:
        named = f"{cert_file}" + (f" with key {key_file}" if key_file else "")
        raise TlsConfigError(
            f"TLS certificate {named}: not a usable PEM certificate/key pair ({error.reason or error})"
        ) from error


def _load_ca(context: ssl.SSLContext, ca: Path | str) -> None:
    ca_file = _readable(ca, "CA file")
    try:
        context.load_verify_locations(cafile=ca_file)
    except ssl.SSLError as error:
        raise TlsConfigError(
            f"TLS CA file {ca_file}: no usable PEM certificate ({error.reason or error})"
        ) from error


def server_context(
    cert: Path | str,
    key: Path | str,
    ca: Path | str | None = None,
    require_client_cert: bool = False,
) -> ssl.SSLContext:
    """Context for a TLS MLLP listener; with require_client_cert, peers must present a cert
    signed by `ca` (mutual TLS, the usual hospital-network setup)."""
    if require_client_cert and ca is None:
        raise TlsConfigError("TLS require_client_cert needs a CA file to verify client certificates")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    _load_chain(context, cert, key)
    if ca is not None:
        _load_ca(context, ca)
        context.verify_mode = ssl.CERT_REQUIRED if require_client_cert else ssl.CERT_OPTIONAL
    return context


def client_context(
    ca: Path | str | None = None,
    cert: Path | str | None = None,
    key: Path | str | None = None,
    verify: bool = True,
) -> ssl.SSLContext:
    """Context for an MLLP client: verifies the server against `ca` (or the system store);
    `cert`/`key` present a client certificate; verify=False only for lab use."""
    if key is not None and cert is None:
        raise TlsConfigError(f"TLS key {key} given without a client certificate")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if verify:
        if ca is not None:
            _load_ca(context, ca)
        else:
            context.load_default_certs(ssl.Purpose.SERVER_AUTH)
    else:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    if cert is not None:
        _load_chain(context, cert, key)
    return context
