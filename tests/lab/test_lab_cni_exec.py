"""The one CNI runtime (overlay.lab.runtime) through its command line, python -m
overlay.lab.cni_exec, with stand-in plugins that log what a runtime hands them: the
order of the calls, prevResult, the CNI_* environment, the result cache, libcni's choice
of the conflist.  No root: the stand-ins never touch a namespace."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from overlay.lab.runtime import Attachment, ResultCache, load_network
from overlay.lab.spec import LabError

# Logs (command, its own name, the network, the prevResult's "chain", CNI_NETNS, CNI_ARGS,
# whether a caller's stray CNI_ variable reached it) to $OVLT_LOG (the caller's
# environment reaches it) and, on ADD, appends its name to the chain.
PLUGIN = """#!{python}
import json, os, sys
conf = json.load(sys.stdin)
me = os.path.basename(sys.argv[0])
prev = conf.get("prevResult")
with open(os.environ["OVLT_LOG"], "a") as f:
    f.write(json.dumps([os.environ["CNI_COMMAND"], me, conf["name"], prev and prev["chain"],
                        os.environ["CNI_NETNS"], os.environ.get("CNI_ARGS"),
                        "CNI_OVLT_STRAY" in os.environ]) + "\\n")
if os.environ["CNI_COMMAND"] == "ADD":
    chain = (prev["chain"] if prev else []) + [me]
    print(json.dumps({{"cniVersion": "1.0.0", "chain": chain,
                      "ips": [{{"address": "10.244.1.2/24"}}]}}))
"""


@pytest.fixture
def lab(tmp_path):
    bin_dir, conf = tmp_path / "bin", tmp_path / "conf"
    bin_dir.mkdir()
    conf.mkdir()
    for name in ("ovlt-a", "ovlt-b"):
        (bin_dir / name).write_text(PLUGIN.format(python=sys.executable))
        (bin_dir / name).chmod(0o755)
    (conf / "10-first.conflist").write_text(json.dumps(
        {"cniVersion": "1.0.0", "name": "first", "plugins": [{"type": "ovlt-a"}]}))
    (conf / "20-two.conflist").write_text(json.dumps(
        {"cniVersion": "1.0.0", "name": "two",
         "plugins": [{"type": "ovlt-a"}, {"type": "ovlt-b"}]}))
    return tmp_path


def cni_exec(lab: Path, *args: str, container_id: str = "ovlt-c1") -> subprocess.CompletedProcess:
    argv = [sys.executable, "-m", "overlay.lab.cni_exec", *args, "--netns", "/run/netns/ovlt-x",
            "--container-id", container_id, "--conf-dir", str(lab / "conf"),
            "--cni-path", f"{lab / 'nope'}:{lab / 'bin'}", "--cache-dir", str(lab / "cache")]
    return subprocess.run(argv, capture_output=True, text=True, timeout=60,
                          env={"PATH": "/usr/bin:/bin", "OVLT_LOG": str(lab / "log"),
                               "CNI_COMMAND": "VERSION", "CNI_OVLT_STRAY": "1"})


def calls(lab: Path) -> list[list]:
    lines = (lab / "log").read_text().splitlines() if (lab / "log").exists() else []
    (lab / "log").unlink(missing_ok=True)
    return [json.loads(line) for line in lines]


def test_add_check_del_of_a_named_list(lab):
    r = cni_exec(lab, "add", "--network", "two")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["chain"] == ["ovlt-a", "ovlt-b"]
    args = "IgnoreUnknown=1;K8S_POD_NAME=ovlt-c1"
    # In order, each with the previous result; the caller's own CNI_* never reach them.
    assert calls(lab) == [["ADD", "ovlt-a", "two", None, "/run/netns/ovlt-x", args, False],
                          ["ADD", "ovlt-b", "two", ["ovlt-a"], "/run/netns/ovlt-x", args,
                           False]]
    assert [p.name for p in (lab / "cache").iterdir()] == ["two-ovlt-c1-eth0.json"]
    r = cni_exec(lab, "check", "--network", "two")
    assert r.returncode == 0 and r.stdout == "", r.stderr
    assert [c[:4] for c in calls(lab)] == [["CHECK", "ovlt-a", "two", ["ovlt-a", "ovlt-b"]],
                                           ["CHECK", "ovlt-b", "two", ["ovlt-a", "ovlt-b"]]]
    r = cni_exec(lab, "del", "--network", "two")
    assert r.returncode == 0, r.stderr
    # Reverse order, with the cached result; then the cache is gone.
    assert [c[:4] for c in calls(lab)] == [["DEL", "ovlt-b", "two", ["ovlt-a", "ovlt-b"]],
                                           ["DEL", "ovlt-a", "two", ["ovlt-a", "ovlt-b"]]]
    assert list((lab / "cache").iterdir()) == []
    r = cni_exec(lab, "del", "--network", "two")  # DEL again: no cached result, still fine
    assert r.returncode == 0, r.stderr
    assert [c[:4] for c in calls(lab)] == [["DEL", "ovlt-b", "two", None],
                                           ["DEL", "ovlt-a", "two", None]]


def test_the_first_list_by_default_and_check_needs_an_add(lab):
    r = cni_exec(lab, "check")
    assert r.returncode == 1
    assert r.stderr.startswith("error: no cached ADD result ") and "nothing to check" in r.stderr
    assert calls(lab) == []
    r = cni_exec(lab, "add")
    assert r.returncode == 0, r.stderr
    assert [c[:3] for c in calls(lab)] == [["ADD", "ovlt-a", "first"]]
    r = cni_exec(lab, "add", "--network", "ovlt-none")
    assert r.returncode == 1
    assert "error: no network named 'ovlt-none' in " in r.stderr and "(2 files)" in r.stderr


def test_load_network_reads_files_in_libcni_order(tmp_path):
    (tmp_path / "05-dir.conf").mkdir()  # not a file: skipped
    (tmp_path / "10-a.conf").write_text(json.dumps({"cniVersion": "1.0.0", "name": "a",
                                                    "type": "bridge"}))
    (tmp_path / "20-b.json").write_text(json.dumps({"cniVersion": "1.0.0", "name": "b",
                                                    "type": "overlay"}))
    (tmp_path / "30-c.txt").write_text("not a CNI file")
    assert load_network(str(tmp_path))["name"] == "a"
    assert load_network(str(tmp_path), "b")["plugins"] == [
        {"cniVersion": "1.0.0", "name": "b", "type": "overlay"}]
    # By name, a .conflist comes before any .conf/.json (libcni's LoadConfList).
    (tmp_path / "90-b.conflist").write_text(json.dumps(
        {"cniVersion": "1.0.0", "name": "b", "plugins": [{"type": "ovlt-a"}]}))
    assert load_network(str(tmp_path), "b")["plugins"] == [{"type": "ovlt-a"}]
    # libcni fails on an unreadable list before the one asked for.
    (tmp_path / "15-bad.conflist").write_text("{nope")
    with pytest.raises(LabError, match="cannot read the CNI network configuration .*15-bad"):
        load_network(str(tmp_path), "b")
    with pytest.raises(LabError, match="does not exist \\(was install-cni run\\?\\)"):
        load_network(str(tmp_path / "none"))


@pytest.mark.parametrize("name, content, error", [
    ("a.conflist", {"name": "n", "type": "bridge"}, "needs a \"plugins\" list"),
    ("a.conflist", {"name": "n", "plugins": []}, "non-empty list"),
    ("a.conflist", {"name": "n", "plugins": [{"bridge": "cni0"}]}, "needs a \"type\"$"),
    ("a.conflist", {"plugins": [{"type": "bridge"}]}, "needs a \"name\""),
    ("a.json", {"name": "n", "plugins": [{"type": "bridge"}]}, "a list of plugins is a .conflist"),
    ("a.conf", ["x"], "is a JSON object"),
])
def test_load_conflist_follows_the_extension(tmp_path, name, content, error):
    """The extension says what a file holds, as in libcni (ConfListFromFile/ConfFromFile)."""
    (tmp_path / name).write_text(json.dumps(content))
    with pytest.raises(LabError, match=error):
        load_network(str(tmp_path))


def test_result_cache(tmp_path):
    cache = ResultCache(str(tmp_path / "cache"))
    att = Attachment("ovlt-c1", "/run/netns/ovlt-x", "net1")
    assert cache.load("n", att) is None
    cache.save("n", att, {"ips": []})
    assert cache.load("n", att) == {"ips": []}
    assert cache.path("n", att).endswith("/n-ovlt-c1-net1.json")
    cache.drop("n", att)
    cache.drop("n", att)  # gone already: fine
    assert cache.load("n", att) is None and list((tmp_path / "cache").iterdir()) == []
    Path(cache.path("n", att)).write_text("{half")
    with pytest.raises(LabError, match="unreadable .*remove it"):
        cache.load("n", att)


def test_a_container_id_or_name_unfit_for_a_file_name_is_refused(lab, tmp_path):
    outside = lab / "outside-eth0.json"
    outside.write_text("{}")
    (lab / "cache" / "two-x").mkdir(parents=True)
    # "<cache>/<network>-<id>-<ifname>.json" with this ID is lab/outside-eth0.json
    r = cni_exec(lab, "del", "--network", "two", container_id="x/../../outside")
    assert r.returncode == 1 and "CNI_CONTAINERID has invalid characters" in r.stderr
    assert outside.exists() and calls(lab) == []  # nothing read, run or removed
    r = cni_exec(lab, "add", container_id="../ovlt-c1")
    assert r.returncode == 1 and calls(lab) == []
    cache = ResultCache(str(tmp_path / "cache"))
    for network, att in (("../n", Attachment("c1", "ns")), ("n", Attachment("c1", "ns", "a/b"))):
        with pytest.raises(LabError, match="no file name for the CNI result"):
            cache.path(network, att)
        with pytest.raises(LabError):
            cache.drop(network, att)
