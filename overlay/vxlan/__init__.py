"""The VXLAN backend: the entries a remote lease needs, the device, and programming them."""
