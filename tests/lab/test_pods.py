"""Unit tests of the lab's pods: names and labels as a user gives them, their records,
the CNI call that names them, and the responder with the probe that judges it."""

from __future__ import annotations

import json
import os
import socket
import threading
from pathlib import Path

import pytest

from overlay.lab.lab import Lab
from overlay.lab.probe import Target, probe
from overlay.lab.responder import Responder
from overlay.lab.runtime import CNIRuntime
from overlay.lab.spec import LabError, LabSpec
from overlay.lab.state import LabState, PodRecord, load_state, save_state


def test_pod_refs_parse_as_a_name_or_ns_slash_name():
    from overlay.lab.spec import parse_pod_ref
    assert parse_pod_ref("pod-node1-1") == (None, "pod-node1-1")
    assert parse_pod_ref("web/db.v2") == ("web", "db.v2")
    for bad, msg in (("", "pod name ''"), ("web/", "pod name ''"), ("/db", "namespace ''"),
                     ("a/b/c", "namespace 'a/b'"), ("Web/db", "namespace 'Web'"),
                     ("web/DB", "pod name 'DB'"), ("x" * 64, "at most 63"),
                     ("web/-db", "pod name '-db'")):
        with pytest.raises(LabError, match=msg):
            parse_pod_ref(bad)


def test_labels_parse_and_bad_ones_are_refused():
    from overlay.lab.spec import parse_labels
    assert parse_labels("") == {}
    assert parse_labels("app=web, tier=front,empty=") == {"app": "web", "tier": "front",
                                                          "empty": ""}
    assert parse_labels("example.com/team=net_ops") == {"example.com/team": "net_ops"}
    for bad, msg in (("app", "expected key=value"), ("=x", "label key ''"),
                     ("a=b,a=c", "given twice"), ("app=we b", "a value"),
                     ("-app=x", "label key '-app'"), ("Bad_/x=y", "its prefix"),
                     ("a=" + "v" * 64, "a value"),
                     (",".join(f"k{i}=v" for i in range(33)), "at most 32")):
        with pytest.raises(LabError, match=msg):
            parse_labels(bad)


def test_pod_namespaces_and_files_never_collide():
    from overlay.lab.spec import pod_key
    spec = LabSpec("ovlt", "/tmp/x")
    keys = [pod_key("default", "a-b"), pod_key("a", "b"), pod_key("a-b", "c"),
            pod_key("a", "b-c"), pod_key("default", "pod-node1-1")]
    assert keys == ["a-b", "a/b", "a-b/c", "a/b-c", "pod-node1-1"]
    assert len({spec.pod_ns(k) for k in keys}) == len(keys)
    assert spec.pod_ns("pod-node1-1") == "ovlt-pod-node1-1"      # as before namespaces
    assert spec.pod_ns("web/db") == "ovlt-web_db"
    assert spec.pod_file("web/db", "responder.log") == "/tmp/x/ovlt/pods/web_db/responder.log"


def test_node_subnets_follow_the_example_cluster():
    assert [str(LabSpec.node_subnet(f"node{i}")) for i in (1, 2, 3, 99)] == [
        "10.244.1.0/24", "10.244.2.0/24", "10.244.3.0/24", "10.244.99.0/24"]


def test_pod_records_keep_namespace_and_labels_and_old_records_load(tmp_path):
    st = LabState("ovlt", 1, ["node1"])
    st.pods["web/db"] = PodRecord("db", "node1", "c1", "10.244.1.9", namespace="web",
                                  labels={"app": "db"}, counted=False)
    path = str(tmp_path / "lab.json")
    save_state(path, st)
    back = load_state(path)
    assert back is not None and back.pods == st.pods
    # a lab.json written before pods had namespaces
    Path(path).write_text(json.dumps({"prefix": "ovlt", "pods_per_node": 1, "nodes": ["node1"],
                                      "pods": [{"name": "pod-node1-1", "node": "node1",
                                                "container_id": "c", "ip": None,
                                                "result": None}]}))
    loaded = load_state(path)
    assert loaded is not None
    pod = loaded.pods["pod-node1-1"]
    assert (pod.ref, pod.labels, pod.counted) == ("default/pod-node1-1", {}, True)
    for bad in ({"labels": {"a": 1}}, {"namespace": "Web"}, {"name": "../x"}):
        raw = {"name": "db", "node": "node1", "container_id": "c", **bad}
        Path(path).write_text(json.dumps({"prefix": "ovlt", "pods_per_node": 1,
                                          "nodes": ["node1"], "pods": [raw]}))
        with pytest.raises(LabError, match="damaged"):
            load_state(path)


def test_the_cni_call_names_the_pod_and_passes_its_labels(tmp_path):
    """A real executable plugin records what the runtime handed it: CNI_ARGS carries the
    pod's namespace and name, the netconf ``args.cni.labels`` its labels."""
    seen = tmp_path / "seen"
    plugin = tmp_path / "recorder"
    result = json.dumps({"cniVersion": "1.1.0", "ips": [{"address": "10.244.1.5/24"}]})
    plugin.write_text(f"#!/bin/sh\necho \"$CNI_ARGS\" > {seen}.env\ncat > {seen}.json\n"
                      f"echo '{result}'\n")
    plugin.chmod(0o755)
    lab = Lab(LabSpec("ovlt", str(tmp_path)), progress=lambda msg: None)
    pod = PodRecord("db", "node1", "ovlt-c1", namespace="web", labels={"tier": "be", "app": "db"})
    runtime = CNIRuntime({"cniVersion": "1.1.0", "name": "overlay",
                          "plugins": [{"type": "recorder"}]}, [str(tmp_path)], None)
    assert runtime.add(lab.attachment(pod))["ips"][0]["address"] == "10.244.1.5/24"
    assert Path(f"{seen}.env").read_text().strip() == (
        "IgnoreUnknown=1;K8S_POD_NAMESPACE=web;K8S_POD_NAME=db")
    conf = json.loads(Path(f"{seen}.json").read_text())
    assert conf["args"] == {"cni": {"labels": [{"key": "app", "value": "db"},
                                               {"key": "tier", "value": "be"}]}}
    plain = PodRecord("pod-node1-1", "node1", "ovlt-c2")
    runtime.add(lab.attachment(plain))
    assert "args" not in json.loads(Path(f"{seen}.json").read_text())
    assert "K8S_POD_NAMESPACE=default;K8S_POD_NAME=pod-node1-1" in Path(f"{seen}.env").read_text()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_responder_answers_tcp_and_udp_naming_its_pod_and_probe_judges_it():
    """A real responder on loopback (free ports instead of 80/81) and the real probe, in
    this process's own namespace: the right pod answers; another pod's name, a closed port
    and a port that never answers are each told apart."""
    import socket

    if os.geteuid() != 0:
        pytest.skip("entering a namespace (even our own) needs root")
    ports = (_free_port(), _free_port())
    responder = Responder("web/db", ports, host="127.0.0.1")
    threading.Thread(target=responder.serve_forever, daemon=True).start()
    here = "/proc/self/ns/net"
    for protocol in ("tcp", "udp"):
        for port in ports:
            got = probe(here, Target("web/db", "127.0.0.1"), port, protocol, timeout=2)
            assert got.ok and "answered in" in got.why, (protocol, port, got)
        wrong = probe(here, Target("web/other", "127.0.0.1"), ports[0], protocol, timeout=2)
        assert not wrong.ok and "not by web/other's responder" in wrong.why
    closed = _free_port()
    for protocol in ("tcp", "udp"):
        got = probe(here, Target("web/db", "127.0.0.1"), closed, protocol, timeout=1)
        assert not got.ok and "connection refused" in got.why, got
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as mute:  # bound, never answers
        mute.bind(("127.0.0.1", 0))
        got = probe(here, Target("web/db", "127.0.0.1"), mute.getsockname()[1], "udp",
                    timeout=0.5)
    assert not got.ok and "no answer within 0.5 s" in got.why
    assert responder.answered == 6      # 2 ports and one wrong name, per protocol
