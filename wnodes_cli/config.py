"""Load and validate the site config (YAML).

The whole file is validated when it loads, so that a typo fails every command
at once with the file, the key path and what was wanted, instead of failing a
job at 3 a.m. Loading never touches the masters on shared storage: a cache hit
must not do any I/O there.
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal, NamedTuple

from wnodes_cli.errors import ConfigError

DEFAULT_PATH = "/etc/wnodes/wnodes.yaml"
ENV_VAR = "WNODES_CONFIG"

#: Image names become file names in the cache and domain names in libvirt.
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")
SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(i?B?)\s*$", re.IGNORECASE)
PERCENT_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*%\s*$")
RANGE_RE = re.compile(r"^\s*(\d+)\s*-\s*(\d+)\s*$")

#: Value types are NamedTuples, not dataclasses: building a dataclass costs
#: ~1 ms at import, and every prolog imports these (see the hit benchmark).
EMPTY: Mapping[str, Any] = MappingProxyType({})

Format = Literal["qcow2", "raw"]
Refresh = Literal["never", "on-change"]

FACILITIES = frozenset(
    ["auth", "authpriv", "cron", "daemon", "ftp", "kern", "lpr", "mail", "news", "syslog", "user", "uucp"]
    + [f"local{i}" for i in range(8)]
)

STRING_FACTS = ("queue", "user", "group", "account", "host", "feature", "vo", "fqan")
INT_FACTS = ("uid", "gid")


class StrPattern(NamedTuple):
    """A glob (``cms*``) or, with the ``re:`` prefix, a full-match regex."""

    text: str
    regex: re.Pattern[str]

    def matches(self, value: str) -> bool:
        return self.regex.fullmatch(value) is not None


class IntRange(NamedTuple):
    low: int
    high: int

    def matches(self, value: int) -> bool:
        return self.low <= value <= self.high

    def __str__(self) -> str:
        return str(self.low) if self.low == self.high else f"{self.low}-{self.high}"


class Match(NamedTuple):
    strings: Mapping[str, tuple[StrPattern, ...]] = EMPTY
    ints: Mapping[str, tuple[IntRange, ...]] = EMPTY
    hostgroups: tuple[str, ...] = ()
    env: Mapping[str, StrPattern] = EMPTY


class Rule(NamedTuple):
    number: int  # 1-based, as an admin counts the list
    match: Match
    image: str | None
    image_from_env: str | None
    allow: tuple[str, ...]


class Image(NamedTuple):
    name: str
    master: Path
    format: Format
    refresh: Refresh
    vcpus: int = 1
    memory_mb: int = 2048
    kernel: Path | None = None  # direct kernel boot; else the image's own bootloader
    initrd: Path | None = None
    cmdline: str | None = None
    guest_agent: bool = False  # the domain gets the org.qemu.guest_agent.0 channel (wnodes exec)
    virtiofs: bool = False  # the job's run/<job>/share is shared into the guest (streamed exec output)


DomainType = Literal["auto", "kvm", "qemu"]


class Libvirt(NamedTuple):
    uri: str = "qemu:///system"
    domain_type: DomainType = "auto"
    network: str | None = None  # a libvirt network name; None: no network interface
    template: Path | None = None  # an admin's domain XML to start from
    start_timeout: float = 120.0


class CacheLimit(NamedTuple):
    bytes: int | None = None
    percent: float | None = None

    def resolve(self, fs_total: int) -> int | None:
        if self.bytes is not None:
            return self.bytes
        if self.percent is not None:
            return int(fs_total * self.percent / 100)
        return None


class Config(NamedTuple):
    path: Path
    cache_dir: Path
    copy_command: tuple[str, ...] | None
    cache_max: CacheLimit
    lock_timeout: float
    images: dict[str, Image]
    rules: tuple[Rule, ...]
    default_image: str | None
    hostgroups: dict[str, str]
    syslog_facility: str
    libvirt: Libvirt = Libvirt()
    lease_grace: float = 600.0
    console_keep: float = 7 * 86400.0  # seconds the console logs of ended jobs are kept

    def image(self, name: str) -> Image:
        from wnodes_cli.errors import JobError, show

        try:
            return self.images[name]
        except KeyError:
            known = ", ".join(sorted(self.images)) or "none"
            raise JobError(f"image {show(name)} is not configured (known: {known}) in {self.path}") from None


def config_path(explicit: str | None) -> Path:
    return Path(explicit or os.environ.get(ENV_VAR) or DEFAULT_PATH)


def load(explicit: str | None = None) -> Config:
    path = config_path(explicit)
    text = _read_safely(path)
    data = _parsed_cache_get(path, text)
    if data is not None:
        # Exactly this text validated before: skip re-checking nodesets (ClusterShell).
        return _Validator(path, trusted=True).config(data)
    data = _parse_yaml(path, text)
    config = _Validator(path).config(data)
    _parsed_cache_put(path, text, data)
    return config


def _parse_yaml(path: Path, text: str) -> Any:
    import yaml  # deferred: `wnodes --version` must not pay for it

    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    try:
        return yaml.load(text, Loader=loader)  # noqa: S506 - a SafeLoader
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1} column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or "not valid YAML"
        raise ConfigError(f"{path}:{where}: {problem}; fix the YAML syntax") from None


#: Parsed configs, keyed by path and checked against the full text. Every
#: prolog loads the config, and importing and running a YAML parser is the
#: largest cost of a cache hit; a JSON copy of the parsed data costs a tenth.
#: Root-only tmpfs: it is recreated after a reboot and never shared.
PARSED_CACHE_DIR = Path(os.environ.get("WNODES_RUN_DIR", "/run/wnodes"))


def _parsed_cache_file(path: Path) -> Path:
    name = str(path.absolute()).replace("%", "%25").replace("/", "%2F")
    return PARSED_CACHE_DIR / f"config-{name[-200:]}.json"


def _parsed_cache_get(path: Path, text: str) -> Any | None:
    import json

    try:
        fd = os.open(_parsed_cache_file(path), os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        st = os.fstat(fd)
        if st.st_uid != os.geteuid() or st.st_mode & 0o077:
            return None  # not written by us: ignore it
        with os.fdopen(fd, "rb", closefd=False) as fh:
            entry = json.loads(fh.read())
    except (OSError, ValueError):
        return None
    finally:
        os.close(fd)
    if not isinstance(entry, dict) or entry.get("text") != text:
        return None
    return entry.get("data")


def _parsed_cache_put(path: Path, text: str, data: Any) -> None:
    import json

    from wnodes_cli import fsutil

    try:
        # Only data that JSON keeps exactly (YAML allows int keys, dates...).
        if json.loads(json.dumps(data)) != data:
            return
        os.makedirs(PARSED_CACHE_DIR, mode=0o700, exist_ok=True)
        st = os.lstat(PARSED_CACHE_DIR)
        if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid() or st.st_mode & 0o077:
            return
        fsutil.atomic_write_bytes(_parsed_cache_file(path), json.dumps({"text": text, "data": data}).encode(), 0o600)
    except (OSError, TypeError, ValueError):
        return  # a cache: never a reason to fail


def _read_safely(path: Path) -> str:
    """Read the config, refusing a file that someone other than root could change.

    The file decides what root runs (copy_command, images, paths), so a
    group- or world-writable file, or one owned by another user, is refused.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        raise ConfigError(
            f"config file {path} does not exist; create it (see examples/wnodes.yaml) or pass --config / ${ENV_VAR}"
        ) from None
    except OSError as exc:
        if exc.errno == 40:  # ELOOP: the file is a symlink
            raise ConfigError(f"config file {path} is a symlink; point --config at the real file") from None
        raise ConfigError(f"config file {path} cannot be read: {exc.strerror}") from None
    try:
        st = os.fstat(fd)
        check_owner(path, st, "config file")
        parent = os.stat(path.parent)
        if parent.st_mode & 0o022 and not parent.st_mode & stat.S_ISVTX:
            raise ConfigError(
                f"directory {path.parent} of config file {path} is writable by others "
                f"(mode {stat.S_IMODE(parent.st_mode):o}); chmod go-w {path.parent}"
            )
        with os.fdopen(fd, "r", encoding="utf-8", closefd=False) as fh:
            return fh.read()
    except UnicodeDecodeError:
        raise ConfigError(f"config file {path} is not UTF-8 text") from None
    finally:
        os.close(fd)


def check_owner(path: Path, st: os.stat_result, what: str) -> None:
    if not stat.S_ISREG(st.st_mode):
        raise ConfigError(f"{what} {path} is not a regular file")
    if st.st_mode & 0o022:
        raise ConfigError(
            f"{what} {path} is writable by group or others (mode {stat.S_IMODE(st.st_mode):o}); chmod go-w {path}"
        )
    if st.st_uid not in (0, os.geteuid()):
        raise ConfigError(f"{what} {path} is owned by uid {st.st_uid}, not root or the current user; chown root {path}")


def parse_size(value: object) -> int | None:
    """``1073741824``, ``"1G"``, ``"512MiB"`` -> bytes; None when not a size."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value if value >= 0 else None
    if not isinstance(value, str):
        return None
    m = SIZE_RE.match(value)
    if not m:
        return None
    number, unit = float(m.group(1)), m.group(2).upper()
    return int(number * 1024 ** "_KMGT".index(unit or "_"))


class _Validator:
    """Turns the parsed YAML into a Config, collecting every problem it finds."""

    TOP_KEYS = frozenset(
        {
            "cache_dir",
            "copy_command",
            "cache_max_bytes",
            "lock_timeout",
            "images",
            "rules",
            "default_image",
            "hostgroups",
            "syslog_facility",
            "libvirt",
            "lease_grace_seconds",
            "console_keep_days",
        }
    )
    IMAGE_KEYS = frozenset(
        {"master", "format", "refresh", "vcpus", "memory_mb", "kernel", "initrd", "cmdline", "guest_agent", "virtiofs"}
    )
    LIBVIRT_KEYS = frozenset({"uri", "domain_type", "network", "template", "start_timeout"})
    RULE_KEYS = frozenset({"match", "image", "image_from_env", "allow"})
    MATCH_KEYS = frozenset(STRING_FACTS) | frozenset(INT_FACTS) | {"hostgroup", "env"}

    def __init__(self, path: Path, trusted: bool = False) -> None:
        self.path = path
        self.trusted = trusted
        self.problems: list[str] = []

    def bad(self, key: str, message: str) -> None:
        self.problems.append(f"{self.path}: {key}: {message}")

    def mapping(self, value: object, key: str, known: frozenset[str]) -> dict[str, Any]:
        if not isinstance(value, dict):
            self.bad(key, f"wanted a mapping, got {_kind(value)}")
            return {}
        for k in value:
            if not isinstance(k, str) or k not in known:
                where = f"{key}.{k}" if key else str(k)
                self.bad(where, f"unknown key (known: {', '.join(sorted(known))})")
        return {k: v for k, v in value.items() if isinstance(k, str) and k in known}

    def config(self, data: object) -> Config:
        if data is None:
            data = {}
        if not isinstance(data, dict):
            # Nothing else can be checked; one clear line beats a cascade.
            raise ConfigError(
                f"{self.path}: the file must be a mapping of keys (cache_dir, images, ...), not a {_kind(data)}"
            )
        top = self.mapping(data, "", self.TOP_KEYS)
        cache_dir = self.abs_path(top.get("cache_dir", "/var/lib/wnodes/cache"), "cache_dir")
        hostgroups = self.hostgroups(top.get("hostgroups", {}))
        images = self.images(top.get("images"))
        rules = self.rules(top.get("rules", []), images, hostgroups)
        default = top.get("default_image")
        if default is not None and (not isinstance(default, str) or default not in images):
            self.bad("default_image", f"wanted one of the images ({', '.join(images) or 'none'})")
            default = None
        config = Config(
            path=self.path,
            cache_dir=cache_dir,
            copy_command=self.copy_command(top.get("copy_command")),
            cache_max=self.cache_max(top.get("cache_max_bytes")),
            lock_timeout=self.seconds(top.get("lock_timeout", 3600), "lock_timeout"),
            images=images,
            rules=rules,
            default_image=default,
            hostgroups=hostgroups,
            syslog_facility=self.facility(top.get("syslog_facility", "daemon")),
            libvirt=self.libvirt(top.get("libvirt", {})),
            lease_grace=self.seconds(top.get("lease_grace_seconds", 600), "lease_grace_seconds"),
            console_keep=86400 * self.seconds(top.get("console_keep_days", 7), "console_keep_days"),
        )
        if self.problems:
            raise ConfigError.from_problems(self.problems)
        return config

    def abs_path(self, value: object, key: str) -> Path:
        if not isinstance(value, str) or not value.startswith("/") or "\0" in value:
            self.bad(key, f"wanted an absolute path, got {_kind(value)}")
            return Path("/nonexistent")
        return Path(os.path.normpath(value))

    def count(self, value: object, key: str, low: int, high: int) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            self.bad(key, f"wanted a whole number from {low} to {high}, got {_kind(value)}")
            return low
        return value

    def flag(self, value: object, key: str) -> bool:
        if not isinstance(value, bool):
            self.bad(key, f"wanted true or false, got {_kind(value)}")
            return False
        return value

    def text(self, value: object, key: str) -> str | None:
        if value is None:
            return None
        if not isinstance(value, str) or any(c in value for c in "\0\n\r"):
            self.bad(key, f"wanted a single-line string, got {_kind(value)}")
            return None
        return value

    def libvirt(self, value: object) -> Libvirt:
        fields = self.mapping(value, "libvirt", self.LIBVIRT_KEYS)
        uri = fields.get("uri", "qemu:///system")
        if not isinstance(uri, str) or not re.match(r"^[a-z0-9+]+://[^\s]*$", uri):
            self.bad("libvirt.uri", f"wanted a libvirt URI such as qemu:///system, got {_kind(uri)}")
            uri = "qemu:///system"
        dtype = fields.get("domain_type", "auto")
        if dtype not in ("auto", "kvm", "qemu"):
            self.bad("libvirt.domain_type", f"wanted auto, kvm or qemu, got {_kind(dtype)}")
            dtype = "auto"
        network = fields.get("network")
        if network is not None and (not isinstance(network, str) or not NAME_RE.match(network)):
            self.bad("libvirt.network", f"wanted a libvirt network name or null, got {_kind(network)}")
            network = None
        template = self.abs_path(fields["template"], "libvirt.template") if "template" in fields else None
        timeout = self.seconds(fields.get("start_timeout", 120), "libvirt.start_timeout")
        return Libvirt(uri=uri, domain_type=dtype, network=network, template=template, start_timeout=timeout)

    def seconds(self, value: object, key: str) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
            self.bad(key, f"wanted a number of seconds >= 0, got {_kind(value)}")
            return 0.0
        return float(value)

    def facility(self, value: object) -> str:
        if not isinstance(value, str) or value not in FACILITIES:
            self.bad("syslog_facility", "wanted a syslog facility such as daemon or local0")
            return "daemon"
        return value

    def copy_command(self, value: object) -> tuple[str, ...] | None:
        if value is None:
            return None
        if not isinstance(value, list) or not value or not all(isinstance(v, str) and "\0" not in v for v in value):
            self.bad("copy_command", 'wanted a list of strings, e.g. [cp, "{src}", "{dst}"]')
            return None
        joined = " ".join(value)
        if "{src}" not in joined or "{dst}" not in joined:
            self.bad("copy_command", "must contain both {src} and {dst}")
            return None
        try:
            for v in value:
                v.format(src="", dst="")
        except (KeyError, IndexError, ValueError):
            self.bad("copy_command", "only {src} and {dst} may be substituted")
            return None
        return tuple(value)

    def cache_max(self, value: object) -> CacheLimit:
        if value is None:
            return CacheLimit()
        if isinstance(value, str) and (m := PERCENT_RE.match(value)):
            pct = float(m.group(1))
            if 0 < pct <= 100:
                return CacheLimit(percent=pct)
        size = parse_size(value)
        if size:
            return CacheLimit(bytes=size)
        self.bad("cache_max_bytes", f"wanted a size (10G, 512MiB, bytes) or a percentage, got {_kind(value)}")
        return CacheLimit()

    def hostgroups(self, value: object) -> dict[str, str]:
        if not isinstance(value, dict):
            self.bad("hostgroups", f"wanted a mapping of group name to nodeset, got {_kind(value)}")
            return {}
        out: dict[str, str] = {}
        for name, nodeset in value.items():
            key = f"hostgroups.{name}"
            if not isinstance(name, str) or not NAME_RE.match(name):
                self.bad(key, "group names are letters, digits, '.', '_' and '-'")
            elif not isinstance(nodeset, str) or not nodeset.strip():
                self.bad(key, f'wanted a nodeset such as "wn[01-20]", got {_kind(nodeset)}')
            elif not self.trusted and (err := _nodeset_error(nodeset)) is not None:
                self.bad(key, f"not a valid nodeset: {err}")
            else:
                out[name] = nodeset
        return out

    def images(self, value: object) -> dict[str, Image]:
        if not isinstance(value, dict) or not value:
            self.bad("images", "wanted a mapping of image name to {master, format}, with at least one image")
            return {}
        out: dict[str, Image] = {}
        for name, spec in value.items():
            key = f"images.{name}"
            if not isinstance(name, str) or not NAME_RE.match(name):
                self.bad(key, "image names are 1-64 letters, digits, '.', '_' and '-', starting with a letter or digit")
                continue
            fields = self.mapping(spec, key, self.IMAGE_KEYS)
            if "master" not in fields:
                self.bad(key, "missing key master (the path of the read-only master, usually a symlink)")
                continue
            fmt = fields.get("format", "qcow2")
            if fmt not in ("qcow2", "raw"):
                self.bad(f"{key}.format", f"wanted qcow2 or raw, got {_kind(fmt)}")
                fmt = "qcow2"
            refresh = fields.get("refresh", "never")
            if refresh not in ("never", "on-change"):
                self.bad(f"{key}.refresh", f"wanted never or on-change, got {_kind(refresh)}")
                refresh = "never"
            out[name] = Image(
                name=name,
                master=self.abs_path(fields["master"], f"{key}.master"),
                vcpus=self.count(fields.get("vcpus", 1), f"{key}.vcpus", 1, 1024),
                memory_mb=self.count(fields.get("memory_mb", 2048), f"{key}.memory_mb", 16, 1 << 24),
                kernel=self.abs_path(fields["kernel"], f"{key}.kernel") if "kernel" in fields else None,
                initrd=self.abs_path(fields["initrd"], f"{key}.initrd") if "initrd" in fields else None,
                cmdline=self.text(fields.get("cmdline"), f"{key}.cmdline"),
                guest_agent=self.flag(fields.get("guest_agent", False), f"{key}.guest_agent"),
                virtiofs=self.flag(fields.get("virtiofs", False), f"{key}.virtiofs"),
                format=fmt,
                refresh=refresh,
            )
        return out

    def rules(self, value: object, images: dict[str, Image], groups: dict[str, str]) -> tuple[Rule, ...]:
        if not isinstance(value, list):
            self.bad("rules", f"wanted a list of rules, got {_kind(value)}")
            return ()
        out = []
        for i, raw in enumerate(value, start=1):
            key = f"rules[{i}]"
            fields = self.mapping(raw, key, self.RULE_KEYS)
            if not isinstance(raw, dict):
                continue
            match = self.match(fields.get("match", {}), f"{key}.match", groups)
            image, from_env = fields.get("image"), fields.get("image_from_env")
            allow: tuple[str, ...] = ()
            if (image is None) == (from_env is None):
                self.bad(key, "wanted exactly one of image or image_from_env")
                continue
            if image is not None and (not isinstance(image, str) or image not in images):
                self.bad(f"{key}.image", f"names an undefined image (known: {', '.join(images) or 'none'})")
                continue
            if from_env is not None:
                if not isinstance(from_env, str) or not ENV_NAME_RE.match(from_env):
                    self.bad(f"{key}.image_from_env", "wanted an environment variable name")
                    continue
                raw_allow = fields.get("allow")
                if not isinstance(raw_allow, list) or not raw_allow:
                    self.bad(f"{key}.allow", "image_from_env needs a non-empty allow list of image names")
                    continue
                unknown = [a for a in raw_allow if not isinstance(a, str) or a not in images]
                if unknown:
                    self.bad(f"{key}.allow", f"names undefined images {unknown!r} (known: {', '.join(images)})")
                    continue
                allow = tuple(raw_allow)
            elif "allow" in fields:
                self.bad(f"{key}.allow", "allow only goes with image_from_env")
                continue
            out.append(Rule(number=i, match=match, image=image, image_from_env=from_env, allow=allow))
        return tuple(out)

    def match(self, value: object, key: str, groups: dict[str, str]) -> Match:
        fields = self.mapping(value, key, self.MATCH_KEYS)
        strings: dict[str, tuple[StrPattern, ...]] = {}
        ints: dict[str, tuple[IntRange, ...]] = {}
        for fact in STRING_FACTS:
            if fact in fields:
                pats = [self.pattern(v, f"{key}.{fact}") for v in _as_list(fields[fact])]
                strings[fact] = tuple(p for p in pats if p is not None)
        for fact in INT_FACTS:
            if fact in fields:
                rngs = [self.int_range(v, f"{key}.{fact}") for v in _as_list(fields[fact])]
                ints[fact] = tuple(r for r in rngs if r is not None)
        hostgroups: tuple[str, ...] = ()
        if "hostgroup" in fields:
            names = _as_list(fields["hostgroup"])
            for n in names:
                if n not in groups:
                    self.bad(
                        f"{key}.hostgroup",
                        f"{n!r} is not defined under hostgroups (known: {', '.join(groups) or 'none'})",
                    )
            hostgroups = tuple(n for n in names if n in groups)
        env: dict[str, StrPattern] = {}
        if "env" in fields:
            raw_env = fields["env"]
            if not isinstance(raw_env, dict) or not raw_env:
                self.bad(f"{key}.env", "wanted a mapping of VARIABLE: pattern")
            else:
                for var, pat in raw_env.items():
                    if not isinstance(var, str) or not ENV_NAME_RE.match(var):
                        self.bad(f"{key}.env", f"{var!r} is not an environment variable name")
                        continue
                    p = self.pattern(pat, f"{key}.env.{var}")
                    if p is not None:
                        env[var] = p
        return Match(strings=strings, ints=ints, hostgroups=hostgroups, env=env)

    def pattern(self, value: object, key: str) -> StrPattern | None:
        if isinstance(value, bool) or not isinstance(value, (str, int)):
            self.bad(key, f"wanted a string, a glob or 're:<regex>', got {_kind(value)}")
            return None
        text = str(value)
        if text.startswith("re:"):
            try:
                return StrPattern(text, re.compile(text[3:]))
            except re.error as exc:
                self.bad(key, f"unusable regex {text[3:]!r}: {exc}")
                return None
        import fnmatch

        return StrPattern(text, re.compile(fnmatch.translate(text)))

    def int_range(self, value: object, key: str) -> IntRange | None:
        if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
            return IntRange(value, value)
        if isinstance(value, str) and (m := RANGE_RE.match(value)):
            low, high = int(m.group(1)), int(m.group(2))
            if low <= high:
                return IntRange(low, high)
        self.bad(key, f'wanted a number >= 0 or a range such as "1000-1999", got {_kind(value)}')
        return None


def _as_list(value: object) -> list[Any]:
    return list(value) if isinstance(value, list) else [value]


def _kind(value: object) -> str:
    if isinstance(value, (dict, list)):
        return type(value).__name__
    return repr(value)[:60]


def _nodeset_error(text: str) -> str | None:
    from ClusterShell.NodeSet import NodeSet, NodeSetException

    try:
        NodeSet(text)
    except NodeSetException as exc:
        return str(exc)
    return None
