"""Firecracker's VM description (its --config-file JSON, and what its API builds up) as emu's
MachineConfig.

The keys and their meaning are Firecracker's (src/vmm/src/resources.rs VmmConfig and the
vmm_config modules, read for facts): kebab-case sections, snake_case fields, JSON null the same
as absent. What emu cannot honour is refused with one line naming the key (vsock, balloon, MMDS,
pmem, custom CPU templates, memory hot-plug, vhost-user drives); what changes nothing a guest can
see (rate limiters, cache and I/O engine choices, the logger and metrics) is accepted and named
in `notes`.

As Firecracker builds the VM: the root drive is the first block device (/dev/vda) and adds
`root=/dev/vda ro|rw` or `root=PARTUUID=... ro|rw` to the command line; devices are virtio-mmio,
announced in the ACPI tables and on the command line; a kernel ELF with a PVH note is entered through PVH, otherwise in
64-bit mode (emu's --boot auto does the same); the serial console is the guest's ttyS0; a guest
reboot (`reboot=k`) ends the run.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from emu import layout
from emu.config import BootKind, DiskSpec, MachineConfig, NetSpec, VirtioSpec, VirtioTransport
from emu.errors import EmuError

#: Firecracker's boot_args when the boot source gives none (boot_source.rs).
DEFAULT_BOOT_ARGS = "reboot=k panic=1 nomodule 8250.nr_uarts=0 i8042.noaux i8042.nomux i8042.dumbkbd swiotlb=noforce"
DEFAULT_MEM_MIB = 128
MAX_VCPUS = 32  # Firecracker's limit

SECTIONS = ("boot-source", "drives", "machine-config", "network-interfaces", "entropy", "logger", "metrics")
#: Sections emu refuses, and why (one line each).
UNSUPPORTED = {
    "balloon": "emu has no virtio-balloon device",
    "vsock": "emu has no virtio-vsock device",
    "mmds-config": "emu has no MMDS (microVM metadata service)",
    "cpu-config": "emu has no custom CPU templates",
    "pmem": "emu has no virtio-pmem device",
    "memory-hotplug": "emu has no memory hot-plug",
}


class FirecrackerConfigError(EmuError):
    """A VM description emu cannot take: one line, status 2 (the API answers 400 with it)."""


@dataclass
class BootSource:
    kernel_image_path: str
    boot_args: str | None = None
    initrd_path: str | None = None


@dataclass
class Drive:
    drive_id: str
    path_on_host: str
    is_root_device: bool
    is_read_only: bool = False
    partuuid: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # accepted, ignored (cache_type, ...)


@dataclass
class NetworkInterface:
    iface_id: str
    host_dev_name: str
    guest_mac: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class VmDescription:
    """Everything a Firecracker VM is configured with before InstanceStart."""

    boot_source: BootSource | None = None
    drives: list[Drive] = field(default_factory=list)
    vcpu_count: int = 1
    mem_size_mib: int = DEFAULT_MEM_MIB
    smt: bool = False
    machine_extra: dict[str, Any] = field(default_factory=dict)
    network_interfaces: list[NetworkInterface] = field(default_factory=list)
    entropy: dict[str, Any] | None = None
    logger: dict[str, Any] | None = None
    metrics: dict[str, Any] | None = None

    # -- building it up (the config file, or one API request at a time) -------------------------
    def set_boot_source(self, body: Any) -> None:
        d = _object(body, "boot-source", ("kernel_image_path", "boot_args", "initrd_path"))
        self.boot_source = BootSource(
            kernel_image_path=_string(d, "boot-source", "kernel_image_path", required=True) or "",
            boot_args=_string(d, "boot-source", "boot_args"),
            initrd_path=_string(d, "boot-source", "initrd_path"),
        )

    def put_drive(self, body: Any, drive_id: str | None = None) -> None:
        where = f"drives[{drive_id}]" if drive_id else "drives[]"
        known = ("drive_id", "path_on_host", "is_root_device", "is_read_only", "partuuid", "cache_type",
                 "io_engine", "rate_limiter", "socket")  # fmt: skip
        d = _object(body, where, known)
        ident = _string(d, where, "drive_id", required=True) or ""
        if drive_id is not None and ident != drive_id:
            raise FirecrackerConfigError(f"{where}: drive_id {ident!r} does not match the path's {drive_id!r}")
        if d.get("socket") is not None:
            raise FirecrackerConfigError(f"drives[{ident}].socket: emu has no vhost-user block devices")
        drive = Drive(
            drive_id=ident,
            path_on_host=_string(d, f"drives[{ident}]", "path_on_host", required=True) or "",
            is_root_device=_bool(d, f"drives[{ident}]", "is_root_device", required=True),
            is_read_only=_bool(d, f"drives[{ident}]", "is_read_only"),
            partuuid=_string(d, f"drives[{ident}]", "partuuid"),
            extra={k: d[k] for k in ("cache_type", "io_engine", "rate_limiter") if d.get(k) is not None},
        )
        others = [x for x in self.drives if x.drive_id != ident]
        if drive.is_root_device and any(x.is_root_device for x in others):
            raise FirecrackerConfigError(f"drives[{ident}]: a root block device already exists")
        old = [x.drive_id for x in self.drives]
        self.drives = others
        if drive.is_root_device:
            self.drives.insert(0, drive)  # the root device is always the first (/dev/vda)
        elif ident in old:
            self.drives.insert(old.index(ident), drive)
        else:
            self.drives.append(drive)

    def set_machine_config(self, body: Any, *, partial: bool = False) -> None:
        known = ("vcpu_count", "mem_size_mib", "smt", "cpu_template", "track_dirty_pages", "huge_pages",
                 "gdb_socket_path")  # fmt: skip
        d = _object(body, "machine-config", known)
        if not partial:
            for key in ("vcpu_count", "mem_size_mib"):
                if d.get(key) is None:
                    raise FirecrackerConfigError(f"machine-config: missing field `{key}`")
        if d.get("vcpu_count") is not None:
            n = _int(d, "machine-config", "vcpu_count")
            if not 1 <= n <= MAX_VCPUS:
                raise FirecrackerConfigError(f"machine-config.vcpu_count: {n} is not between 1 and {MAX_VCPUS}")
            self.vcpu_count = n
        if d.get("mem_size_mib") is not None:
            mib = _int(d, "machine-config", "mem_size_mib")
            if mib < 1:
                raise FirecrackerConfigError(f"machine-config.mem_size_mib: {mib} is not a memory size")
            self.mem_size_mib = mib
        if d.get("smt") is not None:
            self.smt = _bool(d, "machine-config", "smt")
        for key in ("cpu_template", "track_dirty_pages", "huge_pages", "gdb_socket_path"):
            if d.get(key) is not None:
                self.machine_extra[key] = d[key]

    def put_network_interface(self, body: Any, iface_id: str | None = None) -> None:
        where = f"network-interfaces[{iface_id}]" if iface_id else "network-interfaces[]"
        known = ("iface_id", "host_dev_name", "guest_mac", "mtu", "rx_rate_limiter", "tx_rate_limiter")
        d = _object(body, where, known)
        ident = _string(d, where, "iface_id", required=True) or ""
        if iface_id is not None and ident != iface_id:
            raise FirecrackerConfigError(f"{where}: iface_id {ident!r} does not match the path's {iface_id!r}")
        nic = NetworkInterface(
            iface_id=ident,
            host_dev_name=_string(d, f"network-interfaces[{ident}]", "host_dev_name", required=True) or "",
            guest_mac=_string(d, f"network-interfaces[{ident}]", "guest_mac"),
            extra={k: d[k] for k in ("mtu", "rx_rate_limiter", "tx_rate_limiter") if d.get(k) is not None},
        )
        if nic.guest_mac is not None:
            _mac(nic.guest_mac, f"network-interfaces[{ident}].guest_mac")
        self.network_interfaces = [n for n in self.network_interfaces if n.iface_id != ident] + [nic]

    def set_entropy(self, body: Any) -> None:
        self.entropy = _object(body, "entropy", ("rate_limiter",))

    # -- the whole file ----------------------------------------------------------------------------
    @classmethod
    def from_json(cls, data: Any) -> VmDescription:
        if not isinstance(data, dict):
            raise FirecrackerConfigError("the configuration is not a JSON object")
        vm = cls()
        for key, value in data.items():
            if value is None:
                continue
            if key in UNSUPPORTED:
                raise FirecrackerConfigError(f"{key}: {UNSUPPORTED[key]}")
            if key not in SECTIONS:
                raise FirecrackerConfigError(f"unknown key {key!r} (Firecracker's are {', '.join(SECTIONS)}, ...)")
        if data.get("boot-source") is None:
            raise FirecrackerConfigError("boot-source: missing (the kernel to boot)")
        vm.set_boot_source(data["boot-source"])
        drives = data.get("drives") or []
        if not isinstance(drives, list):
            raise FirecrackerConfigError("drives: not a list")
        for d in drives:
            vm.put_drive(d)
        if data.get("machine-config") is not None:
            vm.set_machine_config(data["machine-config"])
        nics = data.get("network-interfaces") or []
        if not isinstance(nics, list):
            raise FirecrackerConfigError("network-interfaces: not a list")
        for n in nics:
            vm.put_network_interface(n)
        if data.get("entropy") is not None:
            vm.set_entropy(data["entropy"])
        for key in ("logger", "metrics"):
            if data.get(key) is not None:
                setattr(vm, key, _object(data[key], key, None))
        return vm

    @classmethod
    def load(cls, path: Path) -> VmDescription:
        try:
            text = path.read_text()
        except FileNotFoundError:
            raise FirecrackerConfigError(f"config file {path}: no such file") from None
        except OSError as e:
            raise FirecrackerConfigError(f"config file {path}: {e.strerror}") from None
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise FirecrackerConfigError(f"config file {path}: not JSON: {e.msg} (line {e.lineno})") from None
        return cls.from_json(data)

    def to_json(self) -> dict[str, Any]:
        """The same VM as Firecracker's config JSON (GET /vm/config): it loads back as this VM."""
        out: dict[str, Any] = {}
        if self.boot_source is not None:
            b = self.boot_source
            out["boot-source"] = {"kernel_image_path": b.kernel_image_path, "initrd_path": b.initrd_path,
                                  "boot_args": b.boot_args}  # fmt: skip
        out["drives"] = [
            {"drive_id": d.drive_id, "partuuid": d.partuuid, "is_root_device": d.is_root_device,
             "is_read_only": d.is_read_only, "path_on_host": d.path_on_host, **d.extra}
            for d in self.drives
        ]  # fmt: skip
        out["machine-config"] = {"vcpu_count": self.vcpu_count, "mem_size_mib": self.mem_size_mib,
                                 "smt": self.smt, **self.machine_extra}  # fmt: skip
        out["network-interfaces"] = [
            {"iface_id": n.iface_id, "host_dev_name": n.host_dev_name, "guest_mac": n.guest_mac, **n.extra}
            for n in self.network_interfaces
        ]  # fmt: skip
        out["entropy"] = self.entropy
        for key, value in (("logger", self.logger), ("metrics", self.metrics)):
            if value is not None:
                out[key] = value
        return out

    # -- what emu makes of it ------------------------------------------------------------------------
    def notes(self) -> list[str]:
        """What is accepted but changes nothing under emu, one line each."""
        out = []
        for d in self.drives:
            out += [f"drives[{d.drive_id}].{k} is accepted and ignored" for k in d.extra]
        for n in self.network_interfaces:
            out += [f"network-interfaces[{n.iface_id}].{k} is accepted and ignored" for k in n.extra]
        out += [f"machine-config.{k} is accepted and ignored" for k in self.machine_extra]
        if self.smt:
            out.append("machine-config.smt: each vCPU is a core of its own under emu")
        if self.entropy and self.entropy.get("rate_limiter") is not None:
            out.append("entropy.rate_limiter is accepted and ignored")
        out += [f"{key} is accepted and ignored" for key in ("logger", "metrics") if getattr(self, key)]
        return out

    def machine_config(self, base: MachineConfig | None = None) -> MachineConfig:
        """The MachineConfig of this VM (on `base`'s backend and run settings, when given)."""
        if self.boot_source is None:
            raise FirecrackerConfigError("no boot source: PUT /boot-source (or boot-source in the file) first")
        b = self.boot_source
        args = DEFAULT_BOOT_ARGS if b.boot_args is None else b.boot_args
        root = self.drives[0] if self.drives and self.drives[0].is_root_device else None
        if root is not None:
            device = f"PARTUUID={root.partuuid}" if root.partuuid else "/dev/vda"
            args = f"{args} root={device} {'ro' if root.is_read_only else 'rw'}"
        mmio = VirtioTransport.MMIO
        return dataclasses.replace(
            base or MachineConfig(),
            kernel=Path(b.kernel_image_path), initrd=Path(b.initrd_path) if b.initrd_path else None, cmdline=args,
            boot=BootKind.AUTO, mem=self.mem_size_mib * layout.MiB, smp=self.vcpu_count, virtio_transport=mmio,
            disks=[DiskSpec(Path(d.path_on_host), readonly=d.is_read_only, transport=mmio) for d in self.drives],
            nets=[NetSpec(tap=n.host_dev_name, mac=_mac(n.guest_mac, "") if n.guest_mac else None, transport=mmio)
                  for n in self.network_interfaces],
            rng=VirtioSpec(transport=mmio) if self.entropy is not None else None,
            no_reboot=True,  # Firecracker exits when the guest reboots (reboot=k)
            # Firecracker (since v1.8) writes ACPI tables whose DSDT lists the virtio-mmio devices
            # and also announces them on the command line.
            acpi=True, virtio_cmdline_too=True,
        )  # fmt: skip


# -- field checks: Firecracker's serde errors, as one line ---------------------------------------
def _object(body: Any, where: str, known: tuple[str, ...] | None) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise FirecrackerConfigError(f"{where}: expected a JSON object")
    if known is not None:
        for key in body:
            if key not in known:
                raise FirecrackerConfigError(f"{where}: unknown field `{key}`, expected one of {', '.join(known)}")
    return body


def _string(d: dict[str, Any], where: str, key: str, *, required: bool = False) -> str | None:
    value = d.get(key)
    if value is None:
        if required:
            raise FirecrackerConfigError(f"{where}: missing field `{key}`")
        return None
    if not isinstance(value, str):
        raise FirecrackerConfigError(f"{where}.{key}: expected a string, not {json.dumps(value)}")
    return value


def _bool(d: dict[str, Any], where: str, key: str, *, required: bool = False) -> bool:
    value = d.get(key)
    if value is None:
        if required:
            raise FirecrackerConfigError(f"{where}: missing field `{key}`")
        return False
    if not isinstance(value, bool):
        raise FirecrackerConfigError(f"{where}.{key}: expected true or false, not {json.dumps(value)}")
    return value


def _int(d: dict[str, Any], where: str, key: str) -> int:
    value = d.get(key)
    if not isinstance(value, int) or isinstance(value, bool):
        raise FirecrackerConfigError(f"{where}.{key}: expected an integer, not {json.dumps(value)}")
    return value


def _mac(text: str, where: str) -> bytes:
    parts = text.split(":")
    try:
        if len(parts) != 6 or any(len(p) != 2 for p in parts):
            raise ValueError
        return bytes(int(p, 16) for p in parts)
    except ValueError:
        raise FirecrackerConfigError(f"{where}: {text!r} is not a MAC address (xx:xx:xx:xx:xx:xx)") from None
