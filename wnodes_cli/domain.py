"""The libvirt domain XML of a job's VM, built with ElementTree.

No job data is ever pasted into an XML string: every value goes through the
XML library, and the job id has been checked against ``jobs.JOB_RE``.

An admin may supply a template (``libvirt.template``): a complete domain XML.
wnodes keeps everything in it and sets exactly these (docs/vm.md):

* ``domain/@type``                 the resolved ``libvirt.domain_type``
* ``name``                         ``wnodes-<job>``
* ``metadata/wnodes:job``          job, image, version, uid (for ``wnodes ps`` and admins)
* ``memory`` (MiB), ``vcpu``       the image's ``memory_mb`` and ``vcpus``; ``currentMemory`` is dropped
* ``os/kernel|initrd|cmdline``     the image's, when it sets ``kernel``; else the template's,
                                   else ``<boot dev='hd'/>``
* ``on_poweroff|on_reboot|on_crash``  ``destroy``: a job's VM never restarts by itself
* ``devices/disk[target/@dev=vda]`` replaced by the job's overlay, with its backing chain
* ``devices/serial``, ``console``  replaced by a serial console logged to ``run/<job>/console.log``
* ``devices/interface``            added when ``libvirt.network`` is set and the template has none
"""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from pathlib import Path

from wnodes_cli.config import Config, Image
from wnodes_cli.errors import ConfigError
from wnodes_cli.jobs import Lease, domain_name

NS = "https://github.com/wnodes/wnodes/xmlns/job/1"
ET.register_namespace("wnodes", NS)

DEFAULT = """<domain type='qemu'>
  <name>placeholder</name>
  <memory unit='MiB'>2048</memory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64'>hvm</type></os>
  <devices>
    <memballoon model='none'/>
  </devices>
</domain>"""


def kvm_usable() -> bool:
    """True when /dev/kvm opens and answers the KVM API version (12)."""
    import fcntl

    try:
        fd = os.open("/dev/kvm", os.O_RDWR | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        return fcntl.ioctl(fd, 0xAE00) == 12  # KVM_GET_API_VERSION
    except OSError:
        return False
    finally:
        os.close(fd)


def resolve_type(config: Config) -> str:
    wanted = config.libvirt.domain_type
    if wanted == "auto":
        return "kvm" if kvm_usable() else "qemu"
    return wanted


def _template(config: Config) -> ET.Element:
    path = config.libvirt.template
    if path is None:
        return ET.fromstring(DEFAULT)  # noqa: S314 - our own constant
    from wnodes_cli.config import check_owner

    try:
        check_owner(path, os.stat(path), "domain template")
        # Root-owned and not writable by others (checked above): the admin's file, not job data.
        root = ET.parse(path).getroot()  # noqa: S314
    except FileNotFoundError:
        raise ConfigError(f"domain template {path} does not exist; fix libvirt.template in {config.path}") from None
    except ET.ParseError as exc:
        raise ConfigError(f"domain template {path} is not valid XML: {exc}") from None
    if root.tag != "domain":
        raise ConfigError(f"domain template {path} must have <domain> as its root element")
    return root


def _set(parent: ET.Element, tag: str, text: str | None = None, **attrs: str) -> ET.Element:
    """The child ``tag`` of ``parent``, created if missing, with text and attributes set."""
    el = parent.find(tag)
    if el is None:
        el = ET.SubElement(parent, tag)
    if text is not None:
        el.text = text
    for k, v in attrs.items():
        el.set(k, v)
    return el


def _drop(parent: ET.Element, tag: str) -> None:
    for el in parent.findall(tag):
        parent.remove(el)


def build(config: Config, img: Image, lease: Lease, console: Path, domain_type: str, share: Path | None = None) -> str:
    root = _template(config)
    root.set("type", domain_type)
    _set(root, "name", domain_name(lease.job))
    meta = _set(root, "metadata")
    for old in meta.findall(f"{{{NS}}}job"):
        meta.remove(old)
    job = ET.SubElement(meta, f"{{{NS}}}job", {"id": lease.job, "image": lease.image, "version": lease.version})
    if lease.uid is not None:
        job.set("uid", str(lease.uid))
    _drop(root, "currentMemory")
    _set(root, "memory", str(img.memory_mb), unit="MiB")
    _set(root, "vcpu", str(img.vcpus))

    os_el = _set(root, "os")
    _set(os_el, "type", "hvm")
    if img.kernel is not None:
        _drop(os_el, "boot")
        _set(os_el, "kernel", str(img.kernel))
        if img.initrd is not None:
            _set(os_el, "initrd", str(img.initrd))
        else:
            _drop(os_el, "initrd")
        if img.cmdline is not None:
            _set(os_el, "cmdline", img.cmdline)
    elif os_el.find("kernel") is None and os_el.find("boot") is None:
        ET.SubElement(os_el, "boot", dev="hd")
    for event in ("on_poweroff", "on_reboot", "on_crash"):
        _set(root, event, "destroy")

    devices = _set(root, "devices")
    for disk in devices.findall("disk"):
        target = disk.find("target")
        if target is not None and target.get("dev") == "vda":
            devices.remove(disk)
    devices.insert(0, _disk(lease))
    _drop(devices, "serial")
    _drop(devices, "console")
    serial = ET.SubElement(devices, "serial", type="pty")
    ET.SubElement(serial, "log", file=str(console), append="off")
    ET.SubElement(serial, "target", port="0")
    if img.guest_agent:
        channel = ET.SubElement(devices, "channel", type="unix")
        ET.SubElement(channel, "target", type="virtio", name="org.qemu.guest_agent.0")
    if img.virtiofs and share is not None:
        # virtiofs needs the guest's memory shared with virtiofsd.
        _drop(root, "memoryBacking")
        backing = ET.Element("memoryBacking")
        ET.SubElement(backing, "source", type="memfd")
        ET.SubElement(backing, "access", mode="shared")
        root.insert(list(root).index(root.find("vcpu")) + 1, backing)  # type: ignore[arg-type]
        fs = ET.SubElement(devices, "filesystem", type="mount", accessmode="passthrough")
        ET.SubElement(fs, "driver", type="virtiofs")
        ET.SubElement(fs, "binary", path="/usr/lib/qemu/virtiofsd")
        ET.SubElement(fs, "source", dir=str(share))
        ET.SubElement(fs, "target", dir="wnodes-job")
    if config.libvirt.network and devices.find("interface") is None:
        iface = ET.SubElement(devices, "interface", type="network")
        ET.SubElement(iface, "source", network=config.libvirt.network)
        ET.SubElement(iface, "model", type="virtio")
    ET.indent(root)
    return ET.tostring(root, encoding="unicode")


def _disk(lease: Lease) -> ET.Element:
    """The overlay as vda, with its backing chain spelled out.

    Naming the backing file here, with ``relabel='no'``, stops libvirt's
    dynamic ownership from chowning the shared cached copy to the QEMU user
    (it stays root's and 0444, readable by all) and from probing its format.
    """
    disk = ET.Element("disk", type="file", device="disk")
    ET.SubElement(disk, "driver", name="qemu", type="qcow2", discard="unmap")
    ET.SubElement(disk, "source", file=lease.overlay)
    backing = ET.SubElement(disk, "backingStore", type="file")
    ET.SubElement(backing, "format", type=lease.format)
    source = ET.SubElement(backing, "source", file=lease.path)
    ET.SubElement(source, "seclabel", model="dac", relabel="no")
    ET.SubElement(backing, "backingStore")
    ET.SubElement(disk, "target", dev="vda", bus="virtio")
    return disk
