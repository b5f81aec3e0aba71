"""The lab's CNI runtime drives the reference plugins (bridge + host-local, chained with
portmap) exactly as a container runtime would: ADD in order with prevResult, CHECK, DEL
in reverse order."""

from __future__ import annotations

import os
import shutil
import tempfile

import pytest

from overlay.lab.runtime import Attachment, CNIRuntime, result_ip
from overlay.lab.spec import LabError
from overlay.lab.system import delete_netns, ensure_netns, ip, run

pytestmark = pytest.mark.integration

REF = "/usr/lib/cni"
_TAG = os.urandom(3).hex()
NODE, POD = f"ovlt-rt-{_TAG}-n", f"ovlt-rt-{_TAG}-p"


@pytest.fixture
def node():
    if not os.access(os.path.join(REF, "bridge"), os.X_OK):
        pytest.skip("reference CNI plugins not installed")
    data = tempfile.mkdtemp(prefix="ovlt-rt-")
    ensure_netns(NODE)
    ensure_netns(POD)
    try:
        yield data
    finally:
        delete_netns(POD)
        delete_netns(NODE)
        shutil.rmtree(data, ignore_errors=True)


def conflist(data: str) -> dict:
    return {"cniVersion": "1.0.0", "name": "ovlt-ref", "plugins": [
        {"type": "bridge", "bridge": "cni0", "isGateway": True,
         "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.99.7.0/24"}]],
                  "dataDir": data}},
        {"type": "portmap", "capabilities": {"portMappings": True}}]}


def test_add_check_del_through_a_chained_conflist(node):
    rt = CNIRuntime(conflist(node), [REF], NODE)
    att = Attachment("ovlt-rt-1", POD, "eth0", "IgnoreUnknown=1;K8S_POD_NAME=p")
    result = rt.add(att)
    pod_ip = result_ip(result)
    assert pod_ip.startswith("10.99.7.")
    # The bridge was made in the node's namespace, the pod's eth0 carries the address.
    assert "cni0" in ip("-o", "link", "show", ns=NODE).stdout
    assert f"{pod_ip}/24" in ip("-o", "addr", "show", "dev", "eth0", ns=POD).stdout
    run(["ip", "netns", "exec", NODE, "ping", "-c1", "-W1", pod_ip])
    assert os.path.exists(os.path.join(node, "ovlt-ref", pod_ip))
    rt.check(att, result)
    rt.delete(att, result)
    assert ip("link", "show", "dev", "eth0", ns=POD, check=False).returncode != 0
    assert not os.path.exists(os.path.join(node, "ovlt-ref", pod_ip))
    rt.delete(att, result)  # DEL twice is fine, as the SPEC wants


def test_failed_plugin_error_is_reported_and_add_rolled_back(node):
    conf = conflist(node)
    conf["plugins"].append({"type": "ovlt-no-such-plugin"})
    rt = CNIRuntime(conf, [REF], NODE)
    with pytest.raises(LabError, match="ovlt-no-such-plugin.*not found"):
        rt.add(Attachment("ovlt-rt-2", POD))
    # The runtime cleaned up after the failed ADD: no address is left reserved.
    left = [f for f in os.listdir(os.path.join(node, "ovlt-ref")) if f.startswith("10.")]
    assert left == []
    bad = conflist(node)
    bad["plugins"][0]["ipam"]["ranges"] = [[{"subnet": "not-a-cidr"}]]
    with pytest.raises(LabError, match="CNI ADD bridge .* failed"):
        CNIRuntime(bad, [REF], NODE).add(Attachment("ovlt-rt-3", POD))
