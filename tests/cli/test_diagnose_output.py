"""diagnose's table: the JSON's status words, long FOUND cells wrapped, not cut."""

from types import SimpleNamespace

from overlay.cli.diagnose_cmds import _print_report
from overlay.diagnose.state import CheckResult


def report(checks):
    facts = SimpleNamespace(public_ip="192.168.1.11", own_subnet="10.244.1.0/24",
                            vxlan_name="overlay.1", bridge_name="cni0", remotes=[])
    counts = {s: sum(c.status == s for c in checks) for s in ("pass", "fail", "warn", "skip")}
    return SimpleNamespace(facts=facts, checks=checks, counts=lambda: counts,
                           skipped=lambda: [c.name for c in checks if c.status == "skip"])


def test_table_uses_the_json_words_and_wraps_long_cells(capsys):
    long = "fdb " + ", ".join(f"0e:00:00:00:00:{i:02x} -> 192.168.1.{i}" for i in range(12))
    _print_report(report([CheckResult("mtu", "pass", "1450", "1450"),
                          CheckResult("fdb", "fail", "entries", long, "restart overlayd")]))
    out = capsys.readouterr().out
    rows = {line.split()[0]: line.split()[1] for line in out.splitlines()[2:4]}
    assert rows == {"mtu": "pass", "fdb": "FAIL"}
    assert "..." not in out and " ok " not in out
    table = out.split("\n\n")[0]
    assert "0e:00:00:00:00:0b -> 192.168.1.11" in " ".join(table.split())  # last peer kept
