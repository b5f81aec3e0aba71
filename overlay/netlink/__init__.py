"""The netlink edge: the only package that imports pyroute2.

``common`` holds the errno translation and namespace helpers every other module here
uses; ``vxlan`` programs the VXLAN device and remote entries (daemon); ``pod`` the
bridge, veth and pod-side addresses and routes (CNI plugin).
"""
