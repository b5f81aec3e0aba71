"""A VTEP MAC that stays the same across daemon restarts and reboots.

Flannel's etcd mode gives the VXLAN device a random MAC on every boot, so peers keep
a stale FDB entry until they see the new lease.  Here the MAC is made once (random,
locally administered, unicast) and persisted in the state dir as
``<state-dir>/vtep-<device>.mac``; every later start reuses it.  A file that holds no
usable MAC (garbled, not text, multicast, all-zero) is logged once and replaced.
"""

from __future__ import annotations

import logging
import os
import random

from overlay.errors import ConfigError
from overlay.lease import normalize_mac
from overlay.util.fsutil import FileTooLarge, atomic_write, os_reason, read_small_file

log = logging.getLogger(__name__)
MAX_MAC_FILE = 4096  # bytes; the file holds one MAC and a newline (18 bytes)


def random_mac(rng: random.Random | None = None) -> str:
    """A random locally administered unicast MAC (first octet x2, x6, xa or xe)."""
    r = rng or random.SystemRandom()
    octets = [r.randrange(256) for _ in range(6)]
    octets[0] = (octets[0] & 0xFC) | 0x02
    return ":".join(f"{o:02x}" for o in octets)


def mac_path(state_dir: str, device: str) -> str:
    return os.path.join(state_dir, f"vtep-{device}.mac")


def load_or_create_vtep_mac(state_dir: str, device: str, adopt: str | None = None,
                            rng: random.Random | None = None) -> str:
    """The persisted VTEP MAC for ``device``; made and saved on first use.

    ``adopt``: the MAC of a device that already exists (state dir lost or first run
    of this version); keeping it spares peers an FDB change.
    """
    path = mac_path(state_dir, device)
    try:  # the one rule for small files: a FIFO or a device planted there is refused
        raw: bytes | None = read_small_file(path, MAX_MAC_FILE)
    except FileNotFoundError:
        raw = b""
    except FileTooLarge:
        raw = None  # content that is no MAC, like any other
    except OSError as e:
        raise ConfigError(f"cannot read the VTEP MAC file {path}: {os_reason(e)}") from None
    if raw is None or raw.strip():
        mac, problem = _saved_mac(raw)
        if mac is not None:
            return mac
        log.warning("%s %s; making a new VTEP MAC", path, problem)
    mac = _usable(adopt) or random_mac(rng)
    try:
        atomic_write(path, mac + "\n", mode=0o644)
    except OSError as e:
        raise ConfigError(f"cannot write the VTEP MAC to {path} (--state-dir): "
                          f"{e.strerror}") from e
    log.info("%s VTEP MAC %s saved in %s", "existing" if mac == _usable(adopt) else "new",
             mac, path)
    return mac


def _saved_mac(raw: bytes | None) -> tuple[str | None, str]:
    """The MAC a VTEP MAC file holds, or None and why not, for the log (which shows a
    MAC's text, never the file's raw bytes).  ``raw`` None: the file was too large."""
    if raw is None:
        return None, f"is larger than {MAX_MAC_FILE} bytes, not a MAC"
    try:
        mac = normalize_mac(raw.decode("ascii"))
    except (UnicodeDecodeError, ValueError):
        return None, "does not hold a MAC"
    usable = _usable(mac)
    if usable is None:
        return None, f"holds {mac}, not a unicast MAC a device can take (multicast, " \
                     "broadcast or all-zero)"
    return usable, ""


def _usable(mac: str | None) -> str | None:
    """A unicast, non-zero MAC, normalised; else None."""
    try:
        m = normalize_mac(mac or "")
    except ValueError:
        return None
    return m if m != "00:00:00:00:00:00" and not int(m[:2], 16) & 1 else None
