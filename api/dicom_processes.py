"""The DICOM part of `radflow listen`, and the receiver processes it shares connections with.

pynetdicom serves each association on a Python thread, so one process handles concurrent
associations on one core at a time. With RADFLOW_DICOM_PROCESSES=N the listen process starts
N-1 receivers and, as it accepts connections on the DICOM port, hands every N-th to itself and
the others in turn to the receivers (the socket passes over a Unix socket, SCM_RIGHTS). Turn by
turn rather than SO_REUSEPORT: the kernel's hash put four concurrent associations on one
process here. Every receiver runs the same services on the same databases: what one process
stores, another can query, retrieve or commit.

A receiver wakes the listen process's relay through a pipe when it accepts an MPPS or makes a
storage batch (the relay also polls every second). It stops when its hand-off connection to
the listen process closes, so a killed listen process leaves no receiver behind. A receiver that
cannot take a connection (dead, restarting) leaves it to the listen process. Owed storage
commitment reports are resumed by the listen process alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import multiprocessing
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing import reduction
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from typing import Any

from adapters.dicom_config import DicomConfig, load_dicom_config
from adapters.logs import configure_logging
from adapters.message_log import MessageLog
from adapters.mpps_log import MppsLog
from adapters.settings import Settings
from adapters.sql import Database
from adapters.storage_log import StorageLog
from api.signals import run_until_signalled
from interfaces.dicom.commitment import storage_commitment_service
from interfaces.dicom.mpps import mpps_service
from interfaces.dicom.query_retrieve import query_retrieve_service
from interfaces.dicom.server import start_dicom_server
from interfaces.dicom.storage import Flusher, storage_service
from interfaces.dicom.worklist import modality_worklist_service

log = logging.getLogger("radflow.dicom.processes")


@dataclass
class DicomPart:
    server: Any
    flusher: Flusher

    def stop(self) -> None:
        self.server.shutdown()
        self.flusher.stop()


def start_dicom_part(
    settings: Settings,
    message_log: MessageLog,
    projections_db: Database,
    dicom_config: DicomConfig,
    wake: Callable[[], None],
    *,
    accept: bool = True,
    resume_commitments: bool = True,
) -> DicomPart:
    """Every DICOM service on one AE, with its storage flusher started."""
    mpps_log = MppsLog(message_log.db)
    storage_log = StorageLog(message_log.db)
    flusher = Flusher(storage_log, on_batched=wake, exam_for_study=exam_for_study(projections_db))
    server = start_dicom_server(
        settings,
        [
            modality_worklist_service(settings),
            mpps_service(mpps_log, on_accepted=wake),
            storage_service(settings, storage_log, flusher),
            query_retrieve_service(settings, dicom_config, projections_db, retrievals=storage_log),
            storage_commitment_service(settings, dicom_config, storage_log, resume=resume_commitments),
        ],
        config=dicom_config,
        association_log=storage_log,
        accept=accept,
    )
    flusher.start()
    # pynetdicom's server forces a full garbage collection every 60 associations (to reclaim
    # ended associations' reference cycles): 27 ms with this process's 100,000 objects, every
    # thread stalled, MLLP ACKs and C-STORE responses with it. What exists now (modules,
    # dictionaries, the AE and its contexts) lives as long as the process: the collector
    # need not look at it again
    gc.freeze()
    return DicomPart(server, flusher)


def exam_for_study(projections_db: Database) -> Callable[[str], str | None]:
    """A study without an accession still finds its exam by the Study Instance UID the
    worklist handed the modality."""

    def lookup(study_instance_uid: str) -> str | None:
        try:
            rows = projections_db.query(
                "SELECT accession FROM worklist WHERE study_instance_uid = ?", (study_instance_uid,)
            )
        except Exception:  # no worklist yet (fresh install): nothing to match
            return None
        return rows[0]["accession"] if rows else None

    return lookup


# --- the extra receivers ----------------------------------------------------------------------


@dataclass
class _Receiver:
    number: int
    process: BaseProcess
    wake: Connection  # read end: a byte per relay wake-up
    handoff: Connection  # connections go this way; closing it (or dying) stops the receiver


class Receivers:
    """The N-1 receiver processes of the listen process: started, handed connections in turn,
    restarted when one dies, stopped with the listen process."""

    def __init__(self, settings: Settings, on_wake: Callable[[], None]) -> None:
        self._settings = settings
        self._on_wake = on_wake
        self._context = multiprocessing.get_context("spawn")  # never fork a threaded process
        self._receivers: list[_Receiver] = []
        self._turn = 0
        self._lock = threading.Lock()
        self.restarts = 0

    def start(self) -> None:
        for number in range(1, self._settings.dicom_processes):
            self._receivers.append(self._spawn(number))

    def _spawn(self, number: int) -> _Receiver:
        wake_r, wake_w = self._context.Pipe(duplex=False)
        ours, theirs = self._context.Pipe(duplex=True)  # a Unix socket pair: it can carry sockets
        process = self._context.Process(
            target=receiver_main,
            args=(number, self._settings, wake_w, theirs),
            name=f"radflow-dicom-{number}",
            daemon=False,
        )
        process.start()
        wake_w.close()  # the child holds the ends it uses
        theirs.close()
        asyncio.get_running_loop().add_reader(wake_r.fileno(), self._drain, wake_r)
        log.info("dicom receiver started", extra={"receiver": number, "pid": process.pid})
        return _Receiver(number, process, wake_r, ours)

    def dispatch(self, connection: socket.socket, address: Any) -> bool:
        """Called by the DICOM server's accepting thread for each new connection: True when a
        receiver took it, False when this process serves it (its turn, or no receiver could)."""
        with self._lock:
            receivers = list(self._receivers)
            self._turn = (self._turn + 1) % (len(receivers) + 1)
            if self._turn == 0:
                return False
            receiver = receivers[self._turn - 1]
            try:
                receiver.handoff.send(address)
                reduction.send_handle(receiver.handoff, connection.fileno(), receiver.process.pid or 0)
            except (OSError, ValueError) as error:  # gone or restarting: serve it here
                log.warning(
                    "dicom receiver refused a connection",
                    extra={"receiver": receiver.number, "error": str(error)},
                )
                return False
            return True

    def _drain(self, wake: Connection) -> None:
        try:
            while wake.poll():
                wake.recv_bytes()
        except (EOFError, OSError):  # the receiver went away: supervise() notices
            asyncio.get_running_loop().remove_reader(wake.fileno())
        self._on_wake()

    async def supervise(self, stop: asyncio.Event, every_s: float = 1.0) -> None:
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), every_s)
            if stop.is_set():
                return
            for index, receiver in enumerate(self._receivers):
                if receiver.process.is_alive():
                    continue
                log.warning(
                    "dicom receiver died, starting it again",
                    extra={"receiver": receiver.number, "exit_code": receiver.process.exitcode},
                )
                replacement = self._spawn(receiver.number)
                with self._lock:
                    self._receivers[index] = replacement
                self._close(receiver)
                self.restarts += 1

    def stop(self, timeout_s: float = 10.0) -> None:
        with self._lock:
            receivers, self._receivers = self._receivers, []
        for receiver in receivers:
            if receiver.process.is_alive():
                receiver.process.terminate()  # SIGTERM: finish the associations it has, stop
        for receiver in receivers:
            receiver.process.join(timeout_s)
            if receiver.process.is_alive():
                receiver.process.kill()
                receiver.process.join(timeout_s)
            self._close(receiver)

    @staticmethod
    def _close(receiver: _Receiver) -> None:
        with contextlib.suppress(ValueError, OSError, RuntimeError):
            asyncio.get_running_loop().remove_reader(receiver.wake.fileno())
        for end in (receiver.wake, receiver.handoff):
            with contextlib.suppress(OSError):
                end.close()


def receiver_main(number: int, settings: Settings, wake: Connection, handoff: Connection) -> None:
    """A receiver process: the DICOM services for the connections handed to it, until
    signalled or orphaned. Its log lines say `listen-dicom-<number>`."""
    configure_logging(f"listen-dicom-{number}", settings.log_level)
    run_until_signalled(lambda stop: _receive(settings, wake, handoff, stop))


async def _receive(settings: Settings, wake: Connection, handoff: Connection, stop: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    lock = threading.Lock()  # a Connection is not safe to write from several threads

    def wake_relay() -> None:
        with lock, contextlib.suppress(OSError):
            wake.send_bytes(b"!")

    message_log = MessageLog(Database.for_file(settings, settings.messages_sqlite_path))
    projections_db = Database.for_file(settings, settings.projections_sqlite_path)
    config = load_dicom_config(settings.dicom_config, settings.dicom_peers)
    part = start_dicom_part(
        settings, message_log, projections_db, config, wake_relay, accept=False, resume_commitments=False
    )

    def take_connections() -> None:
        try:
            while True:
                address = handoff.recv()
                connection = socket.socket(fileno=reduction.recv_handle(handoff))
                part.server.process_request(connection, tuple(address))
        except (EOFError, OSError):  # the listen process closed its end or died
            pass
        except Exception:  # stop, and be started again by the listen process
            log.exception("taking over a connection failed")
        loop.call_soon_threadsafe(stop.set)

    threading.Thread(target=take_connections, name="dicom-handoff", daemon=True).start()
    try:
        await stop.wait()
    finally:
        part.stop()
