"""Imports every command module so each registers its commands on ``cli``."""
from . import config_cmds  # noqa: F401
from . import lease_cmds  # noqa: F401
from . import diagnose_cmds  # noqa: F401  (overlayctl diagnose, trace)
from . import cni_cmds  # noqa: F401  (overlayctl install-cni)
