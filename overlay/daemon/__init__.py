"""overlayd, the node daemon: its flags, its wiring of the parts below, and its HTTP endpoints."""
