"""Runtime configuration from RADFLOW_* environment variables; defaults serve the embedded run."""

from __future__ import annotations

from functools import cached_property
from pathlib import Path
from typing import Literal
from urllib.parse import unquote, urlparse

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="RADFLOW_", extra="ignore")

    data_dir: Path = Path("./var")
    bind_host: str = "127.0.0.1"
    http_port: int = 8000
    mllp_port: int = 2575
    dicom_port: int = 11112
    ae_title: str = "RADFLOW"
    database_url: str = ""  # empty: a SQLite file in the data folder
    temporal_address: str = ""  # empty: start the embedded dev server
    temporal_port: int = 7233
    temporal_namespace: str = "default"
    task_queue: str = "radflow"
    mllp_max_frame_bytes: int = Field(default=4 * 1024 * 1024, ge=1024)
    mllp_read_timeout_s: float = Field(default=60.0, gt=0)
    # MLLP over TLS (inbound): PEM files; with cert+key set the listener serves only TLS
    mllp_tls_cert: Path | None = None
    mllp_tls_key: Path | None = None
    mllp_tls_ca: Path | None = None  # CA for client certificates
    mllp_tls_require_client_cert: bool = False  # mutual TLS: refuse peers without a CA-signed cert
    log_level: str = "INFO"
    dicom_config: Path | None = None  # YAML: peers and allowed calling AEs (adapters/dicom_config)
    dicom_max_associations: int = Field(default=32, ge=1)  # concurrent, per process; beyond: A-ASSOCIATE-RJ
    # processes serving DICOM associations: the listen process hands accepted connections to
    # N-1 receivers in turn; each has its own interpreter lock, so associations use every core
    dicom_processes: int = Field(default=1, ge=1, le=64)
    dicom_peers: str = ""  # "AET=host:port,AET2=host:port": C-MOVE destinations
    dicom_duplicates: Literal["keep", "replace", "reject"] = "keep"  # a SOP instance stored twice
    # how long a completed exam waits for the instances its MPPS referenced before saying
    # which are missing
    images_timeout_s: float = Field(default=900.0, gt=0)
    hl7_config_dir: Path | None = None  # the site's HL7 config folder (channels, destinations.yaml)
    # authentication (api/auth.py): the token signing key (empty: generated once into
    # <data_dir>/auth.key), the roles that must give a TOTP code, lock-out, token lifetimes
    auth_secret: str = ""
    mfa_roles: str = "admin,auditor"
    auth_max_failures: int = Field(default=5, ge=1)
    auth_lockout_minutes: float = Field(default=15.0, gt=0)
    access_token_minutes: float = Field(default=15.0, gt=0)
    refresh_token_hours: float = Field(default=12.0, gt=0)
    session_hours: float = Field(default=8.0, gt=0)  # the web UI's sign-in cookie

    @property
    def uses_postgres(self) -> bool:
        return self.database_url.startswith(("postgresql://", "postgres://"))

    @cached_property
    def sqlite_dir(self) -> Path:
        return self.data_dir.resolve()

    @property
    def events_sqlite_path(self) -> Path:
        if self.database_url.startswith("sqlite:///"):
            return Path(self.database_url.removeprefix("sqlite:///"))
        return self.sqlite_dir / "events.sqlite"

    @property
    def messages_sqlite_path(self) -> Path:
        return self.sqlite_dir / "messages.sqlite"

    @property
    def projections_sqlite_path(self) -> Path:
        return self.sqlite_dir / "projections.sqlite"

    @property
    def dicom_storage_dir(self) -> Path:
        """DICOM files, as received: <study>/<series>/<instance>.dcm."""
        return self.data_dir.resolve() / "dicom"

    @property
    def mfa_role_set(self) -> frozenset[str]:
        return frozenset(r.strip() for r in self.mfa_roles.split(",") if r.strip())

    @property
    def auth_key_path(self) -> Path:
        return self.data_dir.resolve() / "auth.key"

    @property
    def temporal_target(self) -> str:
        return self.temporal_address or f"127.0.0.1:{self.temporal_port}"

    def postgres_params(self) -> dict[str, str]:
        url = urlparse(self.database_url)
        return {
            "host": url.hostname or "127.0.0.1",
            "port": str(url.port or 5432),
            "user": unquote(url.username or "postgres"),
            "password": unquote(url.password or ""),
            "dbname": (url.path or "/postgres").lstrip("/") or "postgres",
        }

    def ensure_data_dir(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)


def load_settings() -> Settings:
    return Settings()
