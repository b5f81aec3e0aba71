"""A VTEP MAC that stays the same across daemon restarts and reboots.

Flannel's etcd mode gives the VXLAN device a random MAC on every boot, so peers keep
a stale FDB entry until they see the new lease.  Here the MAC is made once (random,
locally administered, unicast) and persisted in the state dir as
``<state-dir>/vtep-<device>.mac``; every later start reuses it.
"""

from __future__ import annotations

import logging
import os
import random

from overlay.errors import ConfigError
from overlay.lease import normalize_mac
from overlay.util.fsutil import atomic_write

log = logging.getLogger(__name__)


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
    try:
        with open(path, encoding="ascii") as f:
            text = f.read().strip()
    except FileNotFoundError:
        text = ""
    except OSError as e:
        raise ConfigError(f"cannot read the VTEP MAC file {path}: {e.strerror}") from e
    if text:
        try:
            return normalize_mac(text)
        except ValueError:
            log.warning("%s holds %r, not a MAC; making a new VTEP MAC", path, text)
    mac = _usable(adopt) or random_mac(rng)
    try:
        atomic_write(path, mac + "\n", mode=0o644)
    except OSError as e:
        raise ConfigError(f"cannot write the VTEP MAC to {path} (--state-dir): "
                          f"{e.strerror}") from e
    log.info("%s VTEP MAC %s saved in %s", "existing" if mac == _usable(adopt) else "new",
             mac, path)
    return mac


def _usable(mac: str | None) -> str | None:
    """A unicast, non-zero MAC, normalised; else None."""
    try:
        m = normalize_mac(mac or "")
    except ValueError:
        return None
    return m if m != "00:00:00:00:00:00" and not int(m[:2], 16) & 1 else None
