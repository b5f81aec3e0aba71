"""How to reach etcd: endpoints, key prefix, TLS and auth (a pure value)."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from ipaddress import IPv6Address
from urllib.parse import urlsplit

from overlay.errors import ConfigError
from overlay.util.fsutil import FileTooLarge, SmallFileError, os_reason, read_small_text

DEFAULT_ENDPOINTS = "http://127.0.0.1:2379"
DEFAULT_PREFIX = "/overlay/network"


def endpoint_url(host: str, port: int, secure: bool) -> str:
    """An etcd member's URL, an IPv6 host in brackets (what parse_endpoints reads)."""
    shown = f"[{host}]" if ":" in host else host
    return f"{'https' if secure else 'http'}://{shown}:{port}"


@dataclass(frozen=True)
class Endpoint:
    host: str
    port: int
    secure: bool

    def __str__(self) -> str:  # what parse_endpoints reads back (the runtime file holds it)
        return endpoint_url(self.host, self.port, self.secure)


@dataclass(frozen=True)
class EtcdOptions:
    endpoints: tuple[Endpoint, ...]
    prefix: str = DEFAULT_PREFIX
    cafile: str | None = None
    certfile: str | None = None
    keyfile: str | None = None
    username: str | None = None
    password: str | None = None
    timeout: float = 5.0
    password_file: str | None = None  # where ``password`` came from, if from a file

    @property
    def secure(self) -> bool:
        return any(e.secure for e in self.endpoints) or bool(self.cafile)

    def describe(self) -> str:
        return ",".join(str(e) for e in self.endpoints)


def parse_endpoints(text: str) -> tuple[Endpoint, ...]:
    """``http://127.0.0.1:2379,https://10.0.0.2:2379`` -> endpoints (scheme defaults to
    http, port to 2379; an IPv6 host in brackets).  Anything else is one ConfigError."""
    out = []
    for item in (t.strip() for t in text.split(",")):
        if item:
            out.append(_parse_endpoint(item))
    if not out:
        raise ConfigError("no etcd endpoint given (e.g. --etcd-endpoints http://127.0.0.1:2379)")
    return tuple(out)


_HOSTPORT = re.compile(r"(?:\[(?P<v6>[^\]]*)\]|(?P<name>[A-Za-z0-9._-]+))"
                       r"(?::(?P<port>[^:]*))?")
EXPECTED = "expected http(s)://HOST:PORT (PORT defaults to 2379; an IPv6 HOST in [brackets])"


def _parse_endpoint(item: str) -> Endpoint:
    if any(c.isspace() or not c.isprintable() for c in item):
        raise ConfigError(f"etcd endpoint {item!r}: contains spaces or control characters; "
                          f"{EXPECTED}")
    try:  # urlsplit raises ValueError on a bad [IPv6] part; the host is parsed below
        url = urlsplit(item if "://" in item else "http://" + item)
    except ValueError:
        raise ConfigError(f"etcd endpoint {item!r}: bad [IPv6] host; {EXPECTED}") from None
    if url.scheme not in ("http", "https"):
        raise ConfigError(f"etcd endpoint {item!r}: {EXPECTED}")
    if "@" in url.netloc:
        raise ConfigError(f"etcd endpoint {item!r}: credentials do not go in the URL (use "
                          "--etcd-username and --etcd-password-file)")
    if url.path not in ("", "/") or url.query or url.fragment or "?" in item or "#" in item:
        raise ConfigError(f"etcd endpoint {item!r}: a path, query or fragment has no place "
                          f"here; {EXPECTED}")
    m = _HOSTPORT.fullmatch(url.netloc)
    if m is None:
        raise ConfigError(f"etcd endpoint {item!r}: bad HOST[:PORT]; {EXPECTED}")
    host = m["name"]
    if host is None:
        host = m["v6"]
        try:
            if "%" in host:  # a zone: no use to etcd's peers, and not in etcd's own URLs
                raise ValueError(host)
            IPv6Address(host)
        except ValueError:
            raise ConfigError(f"etcd endpoint {item!r}: bad [IPv6] host (an IPv6 address, "
                              f"no %zone); {EXPECTED}") from None
    digits = m["port"]
    if digits is not None and not re.fullmatch(r"[0-9]{1,5}", digits):
        port = 0
    else:
        port = 2379 if digits is None else int(digits)
    if not 0 < port < 65536:
        raise ConfigError(f"etcd endpoint {item!r}: bad port (a number 1..65535); {EXPECTED}")
    return Endpoint(host.lower(), port, url.scheme == "https")


MAX_PASSWORD_FILE = 4096  # bytes: a password, not a document


def read_password_file(path: str) -> str:
    """The etcd password held in ``path``: its first line, without the line ending.  A
    file keeps the password out of argv, the environment and overlayd's runtime file."""
    try:  # the one rule for small files: a FIFO or a device given here is refused
        text = read_small_text(path, MAX_PASSWORD_FILE)
    except FileTooLarge:
        raise ConfigError(f"--etcd-password-file {path}: larger than {MAX_PASSWORD_FILE} "
                          "bytes; it should hold only the password") from None
    except SmallFileError as e:
        raise ConfigError(f"--etcd-password-file {path}: {e}") from None
    except OSError as e:
        raise ConfigError(f"--etcd-password-file {path}: cannot read it "
                          f"({os_reason(e)})") from None
    lines = text.splitlines()
    if not lines or not lines[0] or any(line.strip() for line in lines[1:]):
        raise ConfigError(f"--etcd-password-file {path}: expected the password alone on "
                          "one line")
    return lines[0]


def make_etcd_options(endpoints: str = DEFAULT_ENDPOINTS, prefix: str = DEFAULT_PREFIX,
                      cafile: str | None = None, certfile: str | None = None,
                      keyfile: str | None = None, username: str | None = None,
                      password: str | None = None, timeout: float = 5.0,
                      password_file: str | None = None) -> EtcdOptions:
    """Validate the user's etcd flags; files must exist and come in the right pairs.
    A password given directly wins over ``password_file`` (then not read)."""
    if not prefix.startswith("/") or prefix.endswith("/") and prefix != "/":
        raise ConfigError(f"etcd prefix {prefix!r}: must start with / and not end with /")
    if bool(certfile) != bool(keyfile):
        raise ConfigError("--etcd-certfile and --etcd-keyfile must be given together")
    for flag, path in (("--etcd-cafile", cafile), ("--etcd-certfile", certfile),
                       ("--etcd-keyfile", keyfile)):
        if path and not os.path.isfile(path):
            raise ConfigError(f"{flag} {path}: no such file")
    if password_file and not password:
        password = read_password_file(password_file)
    else:
        password_file = None
    if bool(username) != bool(password):
        raise ConfigError("--etcd-username and --etcd-password (or --etcd-password-file) "
                          "must be given together")
    parsed = parse_endpoints(endpoints)
    if len({e.secure for e in parsed}) > 1:
        raise ConfigError(f"--etcd-endpoints {endpoints}: mixes http:// and https:// (TLS "
                          "applies to every endpoint): use https:// for all or for none")
    if certfile and not cafile and not parsed[0].secure:
        raise ConfigError("--etcd-certfile/--etcd-keyfile with http:// endpoints would be "
                          "ignored: use https:// endpoints (and --etcd-cafile if needed)")
    return EtcdOptions(parsed, prefix, cafile or None, certfile or None,
                       keyfile or None, username or None, password or None, timeout,
                       password_file or None)
