"""overlayctl diagnose and trace: gather (I/O) -> state (values) -> checks (pure) -> report."""
