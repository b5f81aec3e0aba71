"""Imports every command module so each registers its commands on ``cli``."""
from overlay.cli import (
    cni_cmds,  # noqa: F401  (overlayctl install-cni)
    config_cmds,  # noqa: F401
    diagnose_cmds,  # noqa: F401  (overlayctl diagnose, trace)
    lease_cmds,  # noqa: F401
    node_cmds,  # noqa: F401  (overlayctl nodes, connectivity)
    pod_cmds,  # noqa: F401  (overlayctl pods, pods label)
    policy_cmds,  # noqa: F401  (overlayctl policy, namespaces)
)
