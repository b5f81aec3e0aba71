import hashlib

from overlay.util.digest import name_digest


def test_name_digest_is_hashlibs_sha256_of_the_nul_joined_parts():
    # veth and chain names derive from it: a different digest would orphan every
    # attachment made before an upgrade.
    for parts in (("c1", "eth0"), ("net", "c1", "eth1"), ("", ""), ("ünï", "x" * 300)):
        expected = hashlib.sha256("\0".join(parts).encode()).hexdigest()
        assert name_digest(*parts) == expected
