"""How to reach etcd: endpoints, key prefix, TLS and auth (a pure value)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from urllib.parse import urlsplit

from overlay.errors import ConfigError

DEFAULT_ENDPOINTS = "http://127.0.0.1:2379"
DEFAULT_PREFIX = "/overlay/network"


@dataclass(frozen=True)
class Endpoint:
    host: str
    port: int
    secure: bool

    def __str__(self) -> str:
        return f"{'https' if self.secure else 'http'}://{self.host}:{self.port}"


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
    """``http://127.0.0.1:2379,https://10.0.0.2:2379`` -> endpoints (scheme defaults to http)."""
    out = []
    for item in (t.strip() for t in text.split(",")):
        if not item:
            continue
        url = urlsplit(item if "://" in item else "http://" + item)
        if url.scheme not in ("http", "https") or not url.hostname:
            raise ConfigError(f"etcd endpoint {item!r}: expected http(s)://HOST:PORT")
        try:
            port = url.port or 2379
        except ValueError as e:
            raise ConfigError(f"etcd endpoint {item!r}: bad port") from e
        out.append(Endpoint(url.hostname, port, url.scheme == "https"))
    if not out:
        raise ConfigError("no etcd endpoint given (e.g. --etcd-endpoints http://127.0.0.1:2379)")
    return tuple(out)


MAX_PASSWORD_FILE = 4096  # bytes: a password, not a document


def read_password_file(path: str) -> str:
    """The etcd password held in ``path``: its first line, without the line ending.  A
    file keeps the password out of argv, the environment and overlayd's runtime file."""
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_PASSWORD_FILE + 1)
    except OSError as e:
        raise ConfigError(f"--etcd-password-file {path}: cannot read it "
                          f"({e.strerror or e})") from e
    if len(raw) > MAX_PASSWORD_FILE:
        raise ConfigError(f"--etcd-password-file {path}: larger than {MAX_PASSWORD_FILE} "
                          "bytes; it should hold only the password")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"--etcd-password-file {path}: not UTF-8 text") from e
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
