"""Firecracker's REST API on a Unix socket (HTTP/1.1, Python's http.server), over emu's machine.

Before InstanceStart the requests build a VmDescription (vm_description.py); InstanceStart boots it.
Paths, methods, bodies, status codes (204 for a change, 200 with JSON for a read, 400 with
`{"fault_message": ...}` for anything refused) and the pre-boot-only rule are Firecracker's
(src/firecracker/swagger/firecracker.yaml, read for facts). Unsupported endpoints (vsock,
balloon, MMDS, snapshots, ...) are a 400 naming what emu lacks; nothing hangs.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socketserver
import threading
from collections.abc import Callable
from enum import Enum
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

from emu import __version__
from emu.firecracker.vm_description import UNSUPPORTED, FirecrackerConfigError, VmDescription

log = logging.getLogger("emu.firecracker")

#: The Firecracker release whose API emu follows (GET /version says so).
FIRECRACKER_API_VERSION = "1.10.0"
MAX_BODY = 51_200  # Firecracker's default http-api-max-payload-size
CTRL_ALT_DEL = b"\x14\x11\xe0\x71"  # what Firecracker's i8042 sends: Ctrl, Alt, Del (set 2)


class VmState(Enum):
    NOT_STARTED = "Not started"
    RUNNING = "Running"
    PAUSED = "Paused"


class ApiError(Exception):
    """A refused request: its status and Firecracker's fault_message."""

    def __init__(self, message: str, status: HTTPStatus = HTTPStatus.BAD_REQUEST) -> None:
        super().__init__(message)
        self.status = status


class Vmm(threading.Thread):
    """What the API drives: the VM description until InstanceStart, then the running machine."""

    def __init__(self, instance_id: str, start: Callable[[VmDescription, Vmm], int]) -> None:
        super().__init__(name="vmm", daemon=True)
        self.instance_id = instance_id
        self.vm = VmDescription()
        self.lock = threading.Lock()
        self._start = start
        self.machine: Any = None  # emu.machine.Machine while it runs (set by the start function)
        self.state = VmState.NOT_STARTED
        self.status: int | None = None  # the run's exit status once it ended
        self.done = threading.Event()

    def run(self) -> None:
        try:
            self.status = self._start(self.vm, self)
        except Exception as e:  # the VM could not start: the process ends with emu's status
            status = getattr(e, "status", 70)
            log.error("%s", e)
            self.status = int(status)
        finally:
            self.done.set()

    def instance_start(self) -> None:
        with self.lock:
            if self.state is not VmState.NOT_STARTED:
                raise ApiError("The microVM is already running.")
            try:
                self.vm.machine_config()  # the description must make a machine (boot source present)
            except FirecrackerConfigError as e:
                raise ApiError(f"Cannot start microvm: {e}") from None
            self.state = VmState.RUNNING
        self.start()


class Api:
    """The request handlers, independent of HTTP (each returns a status and a JSON body or None)."""

    def __init__(self, vmm: Vmm) -> None:
        self.vmm = vmm

    def handle(self, method: str, path: str, body: Any) -> tuple[HTTPStatus, Any]:
        parts = [p for p in path.split("?")[0].split("/") if p]
        vmm = self.vmm
        with vmm.lock:
            started = vmm.state is not VmState.NOT_STARTED
        key = parts[0] if parts else ""
        if key in ("vsock", "balloon", "mmds", "snapshot", "cpu-config", "pmem", "hotplug", "serial"):
            section = {"mmds": "mmds-config", "hotplug": "memory-hotplug"}.get(key, key)
            raise ApiError(UNSUPPORTED.get(section, f"emu does not support /{key}"))
        if method == "GET":
            return self._get(parts)
        if method == "PUT" and parts == ["actions"]:
            return self._action(body)
        if method == "PATCH" and parts == ["vm"]:
            return self._patch_vm(body)
        setters: dict[tuple[str, str], Callable[[Any, str | None], None]] = {
            ("PUT", "boot-source"): lambda b, _i: vmm.vm.set_boot_source(b),
            ("PUT", "drives"): lambda b, i: vmm.vm.put_drive(b, i),
            ("PUT", "machine-config"): lambda b, _i: vmm.vm.set_machine_config(b),
            ("PATCH", "machine-config"): lambda b, _i: vmm.vm.set_machine_config(b, partial=True),
            ("PUT", "network-interfaces"): lambda b, i: vmm.vm.put_network_interface(b, i),
            ("PUT", "entropy"): lambda b, _i: vmm.vm.set_entropy(b),
            ("PUT", "logger"): lambda b, _i: setattr(vmm.vm, "logger", _json_object(b)),
            ("PUT", "metrics"): lambda b, _i: setattr(vmm.vm, "metrics", _json_object(b)),
        }
        setter = setters.get((method, key))
        with_id = key in ("drives", "network-interfaces")
        if setter is None or len(parts) != (2 if with_id else 1):
            raise ApiError(f"Invalid request method and/or path: {method} /{'/'.join(parts)}.")
        if started:
            raise ApiError("The requested operation is not supported after starting the microVM.")
        try:
            with vmm.lock:
                setter(body, parts[1] if with_id else None)
        except FirecrackerConfigError as e:
            raise ApiError(str(e)) from None
        return HTTPStatus.NO_CONTENT, None

    def _get(self, parts: list[str]) -> tuple[HTTPStatus, Any]:
        vmm = self.vmm
        with vmm.lock:
            if parts == []:
                info = {"id": vmm.instance_id, "state": vmm.state.value, "vmm_version": FIRECRACKER_API_VERSION,
                        "app_name": "Firecracker"}  # fmt: skip
                return HTTPStatus.OK, info
            if parts == ["version"]:
                return HTTPStatus.OK, {"firecracker_version": FIRECRACKER_API_VERSION, "emu_version": __version__}
            if parts == ["machine-config"]:
                return HTTPStatus.OK, vmm.vm.to_json()["machine-config"]
            if parts == ["vm", "config"]:
                return HTTPStatus.OK, vmm.vm.to_json()
        raise ApiError(f"Invalid request method and/or path: GET /{'/'.join(parts)}.")

    def _action(self, body: Any) -> tuple[HTTPStatus, Any]:
        d = _json_object(body)
        action = d.get("action_type")
        vmm = self.vmm
        if action == "InstanceStart":
            vmm.instance_start()
        elif action == "SendCtrlAltDel":
            machine = vmm.machine
            if machine is None:
                raise ApiError("The requested operation is not supported before starting the microVM.")
            machine.i8042.feed(CTRL_ALT_DEL)
        elif action == "FlushMetrics":
            pass  # emu keeps no metrics file: nothing to flush
        else:
            raise ApiError(f"unknown action_type {action!r} (InstanceStart, SendCtrlAltDel, FlushMetrics)")
        return HTTPStatus.NO_CONTENT, None

    def _patch_vm(self, body: Any) -> tuple[HTTPStatus, Any]:
        d = _json_object(body)
        wanted = d.get("state")
        vmm = self.vmm
        with vmm.lock:
            if vmm.state is VmState.NOT_STARTED or vmm.machine is None:
                raise ApiError("The requested operation is not supported before starting the microVM.")
            if wanted == "Paused":
                vmm.machine.pause()
                vmm.state = VmState.PAUSED
            elif wanted == "Resumed":
                vmm.machine.resume()
                vmm.state = VmState.RUNNING
            else:
                raise ApiError(f'state {wanted!r}: expected "Paused" or "Resumed"')
        return HTTPStatus.NO_CONTENT, None


def _json_object(body: Any) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise ApiError("the request body is not a JSON object")
    return body


class _Handler(BaseHTTPRequestHandler):
    """HTTP/1.1 with keep-alive, as Firecracker's clients use it."""

    protocol_version = "HTTP/1.1"
    server_version = "Firecracker API"
    api: Api  # set on the server's subclass

    def address_string(self) -> str:
        return "unix"

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("api: " + format, *args)

    def _reply(self, status: HTTPStatus, body: Any) -> None:
        data = b"" if body is None else json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Server", "Firecracker API")
        self.send_header("Connection", "keep-alive")
        if data:
            self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if data:
            self.wfile.write(data)

    def _serve(self) -> None:
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            self._reply(HTTPStatus.BAD_REQUEST, {"fault_message": "bad Content-Length"})
            return
        if length > MAX_BODY:
            self._reply(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, {"fault_message": f"the body is over {MAX_BODY} bytes"})
            self.close_connection = True
            return
        raw = self.rfile.read(length) if length else b""
        body: Any = None
        if raw:
            try:
                body = json.loads(raw)
            except (json.JSONDecodeError, UnicodeDecodeError) as e:
                self._reply(HTTPStatus.BAD_REQUEST, {"fault_message": f"the body is not JSON: {e}"})
                return
        try:
            status, out = self.api.handle(self.command, self.path, body)
        except ApiError as e:
            status, out = e.status, {"fault_message": str(e)}
        except Exception as e:  # a bug must answer, not hang the client
            log.debug("api: internal error", exc_info=True)
            status, out = HTTPStatus.INTERNAL_SERVER_ERROR, {"fault_message": f"internal error: {e}"}
        self._reply(status, out)

    do_GET = do_PUT = do_PATCH = _serve

    def do_POST(self) -> None:
        self._serve_refused()

    def do_DELETE(self) -> None:
        self._serve_refused()

    def _serve_refused(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if 0 < length <= MAX_BODY:
            self.rfile.read(length)
        self._reply(HTTPStatus.BAD_REQUEST,
                    {"fault_message": f"Invalid request method and/or path: {self.command} {self.path}."})  # fmt: skip


class ApiServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True

    def __init__(self, path: Path, api: Api) -> None:
        handler = type("Handler", (_Handler,), {"api": api})
        if path.exists() or path.is_symlink():
            raise FirecrackerConfigError(f"--api-sock {path}: the path exists (Firecracker refuses it too)")
        super().__init__(str(path), handler)
        self.path = path

    def server_close(self) -> None:
        super().server_close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)
