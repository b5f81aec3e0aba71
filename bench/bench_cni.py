#!/usr/bin/env python3
"""CNI ADD/DEL wall time: this plugin vs the reference bridge + host-local, same run.

Everything happens inside namespaces this script makes (prefix ``ovcni-bn``): a "node"
namespace in which both plugins run (as a runtime would run them, one process per call)
and one pod namespace per attachment.  Each round does, interleaved so noise hits all
alike: reference ADD, overlay ADD via the warm server, overlay ADD in-process (fallback,
every fourth round: it is the slow one); then the same for DEL.  Reported: median and p99
per variant and the ratios overlay/reference; targets (issue 15): warm ADD <= 1.2x,
fallback ADD <= 4x, warm DEL <= 0.5x, each a median.
When this venv's interpreter is not Debian's /usr/bin/python3 (e.g. a pyenv build with a
shared libpython, slower to start), the warm variant is also run with the entry started
by /usr/bin/python3 ("overlay-warm-sys") to show the interpreter's share.

``--policies N`` measures instead the ADD a real node's overlayd answers (a one-node lab,
prefix ``ovcnp``: etcd, overlayd with its policy agent, the lab's CNI conflist) with 0 and
then N NetworkPolicies in force, against the reference plugins in the same node namespace
and the same rounds (target: ADD <= 1.5x the reference with N = 100). The policies are a
cluster's mix over the 4 namespaces the benchmark's pods live in (namespace selector AND
pod role, named and numeric ports, an ipBlock with an except, UDP 53); 20 resident pods
make every policy select a local pod, and each new pod is selected by 5 of them. Also
reported: how many ADDs took the element path (``overlay_policy_admits``).

``--repeat R`` runs the whole benchmark R times (fresh server and IPAM store each; with
``--policies``, a fresh lab each) and reports every run's ratios and their median and
range.  ``--stress N`` adds N CPU-bound
processes (stress-like, outside the namespaces, each stopping by itself after the
benchmark's expected length, at most 300 s) for the p99 target: warm ADD's p99 no worse
than the reference's under load.  ``--root DIR`` measures another checkout's plugin
(its entry and server) with this script, e.g. a ``git archive`` of the previous release.

    sudo .venv/bin/python bench/bench_cni.py [--rounds 40] [--repeat 5] [--stress 2] [--json]
    sudo .venv/bin/python bench/bench_cni.py --policies 100 [--rounds 40] [--repeat 3] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

PREFIX = "ovcni-bn"
NODE = f"{PREFIX}-node"
HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REF_BIN = "/usr/lib/cni"
STRESS_CAP = 300.0  # seconds: a stress process never outlives this, whatever happens here
TARGETS = {"warm ADD": 1.2, "fallback ADD": 4.0, "warm DEL": 0.5}


def sh(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(args, check=check, capture_output=True, text=True)


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


class Variant:
    def __init__(self, label: str, argv: list[str], config: dict, env: dict[str, str]):
        self.label = label
        self.argv = argv
        self.stdin = json.dumps(config).encode()
        self.env = env
        self.add: list[float] = []
        self.dele: list[float] = []

    def call(self, command: str, container_id: str, netns: str, cni_args: str = "",
             stdin: bytes | None = None) -> float:
        env = dict(self.env, CNI_COMMAND=command, CNI_CONTAINERID=container_id,
                   CNI_NETNS=f"/var/run/netns/{netns}", CNI_IFNAME="eth0", CNI_PATH=REF_BIN)
        if cni_args:
            env["CNI_ARGS"] = cni_args
        start = time.perf_counter()
        proc = subprocess.run(self.argv, input=self.stdin if stdin is None else stdin, env=env,
                              capture_output=True)
        elapsed = time.perf_counter() - start
        if proc.returncode != 0:
            raise RuntimeError(f"{self.label} {command} {container_id}: {proc.stdout!r} "
                               f"{proc.stderr!r}")
        return elapsed


def inner(args: argparse.Namespace) -> dict:
    """Runs inside the node namespace."""
    work = tempfile.mkdtemp(prefix=f"{PREFIX}-")
    sock = os.path.join(work, "cni.sock")
    python = sys.executable
    entry = os.path.join(args.root, "cni-plugin", "overlay")
    server_log = open(os.path.join(work, "srv.log"), "w")  # noqa: SIM115 (a child's log: open while the child runs)
    # The server of the same checkout as the entry (--root), not whatever the venv has.
    server = subprocess.Popen(
        [python, "-c", f"import sys; sys.path.insert(0, {args.root!r}); "
         "from overlay.cni.plugin import main; main()", "serve", "--socket", sock, "-v"],
        stdout=subprocess.DEVNULL, stderr=server_log)
    try:
        deadline = time.monotonic() + 30
        while not os.path.exists(sock):
            if time.monotonic() > deadline or server.poll() is not None:
                raise RuntimeError("warm server did not start")
            time.sleep(0.02)
        common = {"hairpinMode": True, "mtu": 1450}
        variants = [
            Variant("reference", [os.path.join(REF_BIN, "bridge")],
                    {"cniVersion": "1.0.0", "name": f"{PREFIX}-ref", "type": "bridge",
                     "bridge": "ovcni-bnr", "isGateway": True, "isDefaultGateway": True,
                     **common, "ipam": {"type": "host-local", "subnet": "10.251.1.0/24",
                                        "dataDir": work}}, {}),
            Variant("overlay-warm", [python, "-IS", entry],
                    {"cniVersion": "1.0.0", "name": f"{PREFIX}-warm", "type": "overlay",
                     "bridge": "ovcni-bnw", "subnet": "10.251.2.0/24",
                     "isDefaultGateway": True, "dataDir": work, **common},
                    {"OVERLAY_CNI_SOCKET": sock}),
            Variant("overlay-fallback", [python, "-IS", entry],
                    {"cniVersion": "1.0.0", "name": f"{PREFIX}-fb", "type": "overlay",
                     "bridge": "ovcni-bnf", "subnet": "10.251.3.0/24",
                     "isDefaultGateway": True, "dataDir": work, **common},
                    {"OVERLAY_CNI_SOCKET": os.path.join(work, "absent.sock")}),
        ]
        system_python = "/usr/bin/python3"
        if os.path.exists(system_python) and (os.path.realpath(system_python)
                                              != os.path.realpath(python)):
            # The same entry and server, the client started by Debian's python3 (what a
            # fresh machine's venv links to) instead of this venv's interpreter.
            variants.append(Variant(
                "overlay-warm-sys", [system_python, "-IS", entry],
                {"cniVersion": "1.0.0", "name": f"{PREFIX}-sys", "type": "overlay",
                 "bridge": "ovcni-bns", "subnet": "10.251.4.0/24", "isDefaultGateway": True,
                 "dataDir": work, **common}, {"OVERLAY_CNI_SOCKET": sock}))
        fallback_rounds = max(3, args.rounds // 4)
        for r in range(args.rounds):
            for v in variants:
                if v.label == "overlay-fallback" and r >= fallback_rounds:
                    continue
                v.add.append(v.call("ADD", f"{v.label}-{r}", f"{PREFIX}-{v.label}-{r}"))
            for v in variants:
                if v.label == "overlay-fallback" and r >= fallback_rounds:
                    continue
                v.dele.append(v.call("DEL", f"{v.label}-{r}", f"{PREFIX}-{v.label}-{r}"))
        return summarize(variants)
    finally:
        server.terminate()
        server.wait(10)
        server_log.close()
        for bridge in ("ovcni-bnr", "ovcni-bnw", "ovcni-bnf", "ovcni-bns"):
            sh("ip", "link", "del", bridge, check=False)
        if os.environ.get("OVCNI_BENCH_KEEP_LOG"):
            shutil.copy(os.path.join(work, "srv.log"), os.environ["OVCNI_BENCH_KEEP_LOG"])
        shutil.rmtree(work, ignore_errors=True)


def summarize(variants: list[Variant]) -> dict:
    out: dict = {}
    for v in variants:
        out[v.label] = {
            "add_median_ms": statistics.median(v.add) * 1000,
            "add_p99_ms": pct(v.add, .99) * 1000,
            "del_median_ms": statistics.median(v.dele) * 1000,
            "del_p99_ms": pct(v.dele, .99) * 1000,
            "n": len(v.add)}
    ref = out["reference"]
    for label in [v.label for v in variants if v.label != "reference"]:
        out[label]["add_ratio"] = out[label]["add_median_ms"] / ref["add_median_ms"]
        out[label]["del_ratio"] = out[label]["del_median_ms"] / ref["del_median_ms"]
    return out


def start_stress(count: int, seconds: float) -> list[subprocess.Popen]:
    """``count`` CPU-bound processes (a ``stress --cpu``): each stops by itself after
    ``seconds`` (capped), so a killed benchmark leaves no load behind for long."""
    seconds = min(seconds, STRESS_CAP)
    burn = (f"import time\nend = time.monotonic() + {seconds}\n"
            "while time.monotonic() < end:\n    sum(range(10000))\n")
    return [subprocess.Popen([sys.executable, "-c", burn]) for _ in range(count)]


def stop_stress(procs: list[subprocess.Popen]) -> None:
    for proc in procs:
        proc.terminate()
    for proc in procs:
        proc.wait(10)


def run_once(args: argparse.Namespace) -> dict:
    """One whole benchmark in the node namespace (fresh server and IPAM store)."""
    proc = subprocess.run(["ip", "netns", "exec", NODE, sys.executable, os.path.abspath(__file__),
                           "--inner", "--rounds", str(args.rounds), "--root", args.root],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr)
    result: dict = json.loads(proc.stdout)
    return result


def aggregate(runs: list[dict]) -> dict:
    """Per target: every run's ratio, their median and range; p99s for the stress target."""
    def ratios(label: str, key: str) -> list[float]:
        return [run[label][key] for run in runs]

    out = {}
    for name, (label, key) in {"warm ADD": ("overlay-warm", "add_ratio"),
                               "fallback ADD": ("overlay-fallback", "add_ratio"),
                               "warm DEL": ("overlay-warm", "del_ratio")}.items():
        values = ratios(label, key)
        out[name] = {"runs": values, "median": statistics.median(values), "min": min(values),
                     "max": max(values), "target": TARGETS[name],
                     "met": statistics.median(values) <= TARGETS[name]}
    ref_p99 = [run["reference"]["add_p99_ms"] for run in runs]
    warm_p99 = [run["overlay-warm"]["add_p99_ms"] for run in runs]
    out["ADD p99 ms"] = {"reference": ref_p99, "overlay-warm": warm_p99,
                         "met": statistics.median(warm_p99) <= statistics.median(ref_p99)}
    return out


def outer(args: argparse.Namespace) -> int:
    if os.geteuid() != 0:
        print("bench_cni needs root (network namespaces)", file=sys.stderr)
        return 1
    pods = [f"{PREFIX}-{label}-{r}" for r in range(args.rounds)
            for label in ("reference", "overlay-warm", "overlay-fallback", "overlay-warm-sys")]
    made = []
    stress: list[subprocess.Popen] = []
    runs = []
    try:
        for ns in [NODE] + pods:
            sh("ip", "netns", "add", ns)
            made.append(ns)
        if args.stress:
            # ~0.25 s per round with the fallback's share, doubled for the load itself
            stress = start_stress(args.stress, 30 + 0.5 * args.rounds * args.repeat)
        for _ in range(args.repeat):
            runs.append(run_once(args))
    except RuntimeError as e:
        print(e, file=sys.stderr)
        return 1
    finally:
        stop_stress(stress)
        for ns in reversed(made):
            sh("ip", "netns", "del", ns, check=False)
    summary = aggregate(runs)
    if args.json:
        print(json.dumps({"runs": runs, "summary": summary, "stress": args.stress}, indent=2))
        return 0
    for i, result in enumerate(runs, 1):
        print(f"run {i}/{len(runs)}" + (f" (stress: {args.stress} CPU-bound processes)"
                                        if args.stress else ""))
        print(f"{'variant':18} {'ADD med':>8} {'ADD p99':>8} {'DEL med':>8} {'DEL p99':>8} "
              f"{'ADD x':>6} {'DEL x':>6}  n")
        for label, r in result.items():
            print(f"{label:18} {r['add_median_ms']:8.1f} {r['add_p99_ms']:8.1f} "
                  f"{r['del_median_ms']:8.1f} {r['del_p99_ms']:8.1f} "
                  f"{r.get('add_ratio', 1):6.2f} {r.get('del_ratio', 1):6.2f}  {r['n']}")
    for name in TARGETS:
        t = summary[name]
        print(f"{name:13} median {t['median']:.2f}x over {len(runs)} run(s) "
              f"(range {t['min']:.2f}-{t['max']:.2f}), target <= {t['target']}x: "
              f"{'met' if t['met'] else 'MISSED'}")
    p99 = summary["ADD p99 ms"]
    print(f"ADD p99       warm {statistics.median(p99['overlay-warm']):.1f} ms vs reference "
          f"{statistics.median(p99['reference']):.1f} ms (medians over runs): "
          f"{'met' if p99['met'] else 'MISSED'}")
    return 0


# --- --policies N: a lab node's overlayd, its policy agent in the ADD's path ------------------
LAB_PREFIX = "ovcnp"
LAB_NAMESPACES = 4  # where the benchmark's pods and the policies live
APPS = 5  # app labels; policy i selects app{i % APPS} of its namespace


def lab_policies(n: int) -> list[dict]:
    """``n`` NetworkPolicies shaped like a cluster's (see the module's docstring)."""
    return [{"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
             "metadata": {"name": f"pol{i}", "namespace": f"bn{i % LAB_NAMESPACES}"},
             "spec": {"podSelector": {"matchLabels": {"app": f"app{i // LAB_NAMESPACES % APPS}"}},
                      "policyTypes": ["Ingress", "Egress"],
                      "ingress": [{"from": [{"namespaceSelector": {"matchLabels":
                                                                   {"team": f"t{i % 2}"}},
                                             "podSelector": {"matchLabels":
                                                             {"role": f"role{i % 3}"}}}],
                                   "ports": [{"port": "http"}, {"port": 9000 + i % 50}]}],
                      "egress": [{"to": [{"ipBlock": {"cidr": "172.16.0.0/12",
                                                      "except": [f"172.16.{i % 256}.0/24"]}}]},
                                 {"ports": [{"port": 53, "protocol": "UDP"}]}]}}
            for i in range(n)]


def inner_lab(spec_path: str) -> dict:
    """Runs inside the lab node's namespace: reference and overlay ADD/DEL, interleaved."""
    with open(spec_path) as f:
        spec = json.load(f)
    ref = Variant("reference", [os.path.join(REF_BIN, "bridge")], spec["ref_conf"], {})
    ov = Variant("overlay-warm", [spec["python"], "-IS", spec["entry"]], spec["conf"],
                 {"OVERLAY_CNI_SOCKET": spec["socket"]})
    for r, (ns, app, role) in enumerate(spec["pods"]):
        name = f"bench-{spec['tag']}-{r}"
        conf = dict(spec["conf"], args={"cni": {"labels": [{"key": "app", "value": app},
                                                           {"key": "role", "value": role}]}})
        cni_args = f"IgnoreUnknown=1;K8S_POD_NAMESPACE={ns};K8S_POD_NAME={name}"
        ref.add.append(ref.call("ADD", f"ref-{name}", f"{LAB_PREFIX}-pr-{r}"))
        ov.add.append(ov.call("ADD", f"ov-{name}", f"{LAB_PREFIX}-po-{r}", cni_args,
                              json.dumps(conf).encode()))
        ref.dele.append(ref.call("DEL", f"ref-{name}", f"{LAB_PREFIX}-pr-{r}"))
        ov.dele.append(ov.call("DEL", f"ov-{name}", f"{LAB_PREFIX}-po-{r}", cni_args,
                               json.dumps(conf).encode()))
    sh("ip", "link", "del", f"{LAB_PREFIX}-brr", check=False)
    return summarize([ref, ov])


def _node_nft_counters(lab) -> int:
    proc = sh("ip", "netns", "exec", lab.spec.node_ns("node1"), "nft", "-j", "list",
              "counters", "table", "inet", "overlay-policy", check=False)
    if proc.returncode != 0:
        return 0
    return sum(1 for item in json.loads(proc.stdout)["nftables"] if "counter" in item)


def _admits(lab) -> dict[str, float]:
    from overlay.lab import system as sysx

    host, port = lab.healthz_addr("node1").rsplit(":", 1)
    _, body = sysx.http_get(lab.spec.node_ns("node1"), host, int(port), "/metrics", 2.0)
    want = "overlay_policy_admits_total{path=\""
    return {line[len(want):].split('"')[0]: float(line.rsplit(" ", 1)[1])
            for line in body.splitlines() if line.startswith(want)}


def _wait_counters(lab, want: int, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while _node_nft_counters(lab) < want:
        if time.monotonic() > deadline:
            raise RuntimeError(f"the policy table never held {want} counters")
        time.sleep(0.2)


def lab_block(lab, work: str, tag: str, rounds: int) -> dict:
    """One block of ``rounds`` in the lab node (pods' namespaces made and removed here)."""
    from overlay.lab.runtime import find_conflist, load_conflist

    conflist = load_conflist(find_conflist(lab.spec.cni_conf_dir("node1")))
    conf = dict(conflist["plugins"][0], cniVersion=conflist["cniVersion"],
                name=conflist["name"])
    pods = [(f"bn{r % LAB_NAMESPACES}", f"app{r % APPS}", f"role{r % 3}") for r in range(rounds)]
    spec = {"tag": tag, "python": sys.executable, "conf": conf, "pods": pods,
            "entry": os.path.join(lab.spec.cni_bin_dir, "overlay"),
            "socket": lab.spec.node_file("node1", "cni.sock"),
            "ref_conf": {"cniVersion": "1.0.0", "name": f"{LAB_PREFIX}-ref", "type": "bridge",
                         "bridge": f"{LAB_PREFIX}-brr", "isGateway": True,
                         "isDefaultGateway": True, "hairpinMode": True, "mtu": 1450,
                         "ipam": {"type": "host-local", "subnet": "10.251.1.0/24",
                                  "dataDir": work}}}
    path = os.path.join(work, f"spec-{tag}.json")
    with open(path, "w") as f:
        json.dump(spec, f)
    made = []
    try:
        for r in range(rounds):
            for kind in ("pr", "po"):
                sh("ip", "netns", "add", f"{LAB_PREFIX}-{kind}-{r}")
                made.append(f"{LAB_PREFIX}-{kind}-{r}")
        proc = subprocess.run(["ip", "netns", "exec", lab.spec.node_ns("node1"),
                               sys.executable, os.path.abspath(__file__), "--inner-lab", path],
                              capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(proc.stderr)
        result: dict = json.loads(proc.stdout)
        return result
    finally:
        for ns in made:
            sh("ip", "netns", "del", ns, check=False)


def lab_outer(args: argparse.Namespace) -> int:
    """``--policies N``: ``--repeat`` runs, each with a fresh lab; their ratios' median."""
    runs = []
    for i in range(args.repeat):
        if args.repeat > 1:
            print(f"run {i + 1}/{args.repeat}", file=sys.stderr)
        out = lab_run(args)
        if out is None:
            return 1
        runs.append(out)
    ratios = [r["blocks"][str(args.policies)]["overlay-warm"]["add_ratio"] for r in runs]
    if args.repeat > 1:
        result = {"runs": runs, "policies": args.policies, "rounds": args.rounds,
                  "add_ratio_median": statistics.median(ratios), "add_ratio_min": min(ratios),
                  "add_ratio_max": max(ratios), "target": 1.5,
                  "met": statistics.median(ratios) <= 1.5}
    else:
        result = runs[0]
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    for r in runs:
        _print_lab_run(r, args.policies)
    if args.repeat > 1:
        print(f"ADD with {args.policies} policies over {len(runs)} runs: median "
              f"{result['add_ratio_median']:.2f}x (range {min(ratios):.2f}-{max(ratios):.2f}), "
              f"target <= 1.5x: {'met' if result['met'] else 'MISSED'}")
    return 0


def lab_run(args: argparse.Namespace) -> dict | None:
    """One fresh one-node lab: a block with no policy, then one with ``args.policies``."""
    from overlay.lab.lab import Lab
    from overlay.lab.spec import LabError, LabSpec

    base = tempfile.mkdtemp(prefix=f"{LAB_PREFIX}-labdir-")
    lab = Lab(LabSpec(LAB_PREFIX, base), progress=lambda m: print(f"  {m}", file=sys.stderr))
    blocks: dict[str, dict] = {}
    try:
        lab.up(nodes=1, pods_per_node=0)
        for k in range(LAB_NAMESPACES):
            lab.overlayctl("namespaces", "create", f"bn{k}")
            lab.overlayctl("namespaces", "label", f"bn{k}", f"team=t{k % 2}")
            for a in range(APPS):
                lab.add_pod(f"res{a}", "node1", f"bn{k}",
                            {"app": f"app{a}", "role": f"role{a % 3}"})
        blocks["0"] = lab_block(lab, base, "p0", args.rounds)
        manifest = os.path.join(base, "policies.json")
        with open(manifest, "w") as f:
            json.dump({"apiVersion": "v1", "kind": "List", "items": lab_policies(args.policies)}, f)
        lab.overlayctl("policy", "apply", "-f", manifest)
        _wait_counters(lab, 4 * args.policies)
        time.sleep(1.0)  # the compiler's last pass
        before = _admits(lab)
        blocks[str(args.policies)] = lab_block(lab, base, f"p{args.policies}", args.rounds)
        after = _admits(lab)
        admits = {k: after.get(k, 0) - before.get(k, 0) for k in after}
    except (RuntimeError, LabError) as e:
        print(e, file=sys.stderr)
        return None
    finally:
        try:
            if os.environ.get("OVCNI_BENCH_KEEP_LOG") and lab.state is not None:
                shutil.copy(lab.daemon_log("node1"), os.environ["OVCNI_BENCH_KEEP_LOG"])
            if lab.state is not None:
                lab.down()
        finally:
            shutil.rmtree(base, ignore_errors=True)
    return {"blocks": blocks, "policies": args.policies, "rounds": args.rounds,
            "admits_during_policy_block": admits, "target": 1.5,
            "met": blocks[str(args.policies)]["overlay-warm"]["add_ratio"] <= 1.5}


def _print_lab_run(out: dict, policies: int) -> None:
    for count, b in out["blocks"].items():
        ref, ov = b["reference"], b["overlay-warm"]
        print(f"{count:>4} policies: reference ADD {ref['add_median_ms']:.1f} ms, overlay "
              f"ADD {ov['add_median_ms']:.1f} ms ({ov['add_ratio']:.2f}x), DEL "
              f"{ov['del_median_ms']:.1f} vs {ref['del_median_ms']:.1f} ms "
              f"({ov['del_ratio']:.2f}x), n={ov['n']}")
    print(f"ADDs by path during the {policies}-policy block: "
          f"{out['admits_during_policy_block']}; target ADD <= 1.5x with {policies}: "
          f"{'met' if out['met'] else 'MISSED'}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=40)
    parser.add_argument("--repeat", type=int, default=1, help="whole runs (default 1)")
    parser.add_argument("--stress", type=int, default=0, metavar="N",
                        help="N CPU-bound processes running alongside (default none)")
    parser.add_argument("--root", default=HERE,
                        help="checkout whose plugin is measured (default this one)")
    parser.add_argument("--policies", type=int, default=0, metavar="N",
                        help="measure a lab node's overlayd with 0 then N policies in force")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--inner", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--inner-lab", metavar="SPEC", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.rounds < 1 or args.repeat < 1 or args.stress < 0:
        parser.error("--rounds and --repeat must be >= 1, --stress >= 0")
    args.root = os.path.abspath(args.root)
    if not os.path.exists(os.path.join(args.root, "cni-plugin", "overlay")):
        parser.error(f"{args.root} holds no cni-plugin/overlay")
    if args.inner_lab:
        print(json.dumps(inner_lab(args.inner_lab)))
        return 0
    if args.inner:
        print(json.dumps(inner(args)))
        return 0
    if args.policies:
        if os.geteuid() != 0:
            print("bench_cni needs root (network namespaces)", file=sys.stderr)
            return 1
        return lab_outer(args)
    return outer(args)


if __name__ == "__main__":
    sys.exit(main())
