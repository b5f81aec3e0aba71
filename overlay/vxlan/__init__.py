"""The VXLAN backend: which entries a remote lease needs, the device, and getting the kernel there."""
