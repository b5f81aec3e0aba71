"""bench/profile_policy.py's reading of a profile: which symbols are netfilter's and which
part they belong to, the shares of the busy CPU, and the per-round differences.

The profiling itself needs two labs, root and perf (the benchmark run is its test)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from .benchmod import ROOT, load

load("bench_dataplane")
pp = load("profile_policy")

# perf report --no-children --sort symbol --stdio -q, abridged from a real run
REPORT = """\
    20.00%  [k] pv_native_safe_halt                    -      -
    30.00%  [k] copy_user_enhanced_fast_string         -      -
     2.00%  [k] __nf_conntrack_find_get                -      -
     1.00%  [k] nf_conntrack_tcp_packet                -      -
     1.00%  [k] ipv4_confirm                           -      -
     1.50%  [k] nft_do_chain                           -      -
     0.50%  [k] nft_lookup_eval                        -      -
     1.20%  [k] nf_hook_slow                           -      -
     0.80%  [k] br_nf_pre_routing                      -      -
     0.20%  [k] ip_sabotage_in                         -      -
     0.40%  [k] nf_checksum                            -      -
     0.40%  [.] _PyEval_EvalFrameDefault               -      -
    41.00%  [k] tcp_sendmsg_locked                     -      -
"""


@pytest.mark.parametrize(("symbol", "part"), [
    ("__nf_conntrack_find_get", "conntrack"), ("nf_conntrack_in", "conntrack"),
    ("ipv4_conntrack_defrag", "conntrack"), ("nf_ct_deliver_cached_events", "conntrack"),
    ("tcp_in_window", "conntrack"), ("__siphash_unaligned", "conntrack"),
    ("ipv4_get_l4proto", "conntrack"), ("nft_do_chain", "nftables"),
    ("__nft_trace_packet", "nftables"), ("nf_hook_slow", "hooks"),
    ("nf_hook_slow_list", "hooks"), ("br_nf_forward_ip.part.0", "br_netfilter"),
    ("ip_sabotage_in", "br_netfilter"), ("nf_checksum", "other"),
    ("tcp_sendmsg_locked", None), ("copy_user_enhanced_fast_string", None),
    ("fib_table_lookup", None)])
def test_symbols_fall_in_their_part(symbol: str, part: str | None) -> None:
    assert pp.part_of(symbol) == part


def test_shares_are_of_the_busy_samples() -> None:
    got = pp.shares(REPORT)
    assert got["busy"] == pytest.approx(80.0)       # 100 % sampled, 20 % idle
    assert got["conntrack"] == pytest.approx(100 * 4.0 / 80)
    assert got["nftables"] == pytest.approx(100 * 2.0 / 80)
    assert got["hooks"] == pytest.approx(100 * 1.2 / 80)
    assert got["br_netfilter"] == pytest.approx(100 * 1.0 / 80)
    assert got["other"] == pytest.approx(100 * 0.4 / 80)
    assert got["netfilter"] == pytest.approx(100 * 8.6 / 80)
    assert list(got["top"]) == ["__nf_conntrack_find_get", "nft_do_chain", "nf_hook_slow",
                                "nf_conntrack_tcp_packet", "ipv4_confirm"]


def test_a_profile_without_busy_samples_is_an_error() -> None:
    with pytest.raises(ValueError, match="no busy samples"):
        pp.shares("   100.00%  [k] pv_native_safe_halt  -  -\n")


def test_added_is_the_per_round_difference() -> None:
    def figures(netfilter: float, gbps: float) -> dict[str, float]:
        return {"gbps": gbps, "busy": 80.0, "netfilter": netfilter,
                "cost": pp.cost(80.0, gbps, cpus=2),
                **{p: netfilter / len(pp.PART_NAMES) for p in pp.PART_NAMES}}
    rounds = [{"policies": figures(9.0, 9.0), "none": figures(3.0, 10.0)},
              {"policies": figures(12.0, 8.0), "none": figures(4.0, 9.0)},
              {"policies": figures(7.0, 9.5), "none": figures(3.0, 10.5)}]
    s = pp.summarize(rounds)
    assert s["added"]["netfilter"] == {"median": 6.0, "min": 4.0, "max": 8.0}
    # the range is the rounds' own differences (7 - 3 to 12 - 4), not the arms' ranges'
    assert s["policies"]["netfilter"] == {"median": 9.0, "min": 7.0, "max": 12.0}
    assert s["none"]["gbps"]["median"] == 10.0
    # as busy, 10/9, 9/8 and 10.5/9.5 times the CPU per gigabit
    assert s["added"]["cost"]["median"] == pytest.approx(100 * (10 / 9 - 1))
    assert s["added"]["cost"]["min"] == pytest.approx(100 * (10.5 / 9.5 - 1))
    assert s["added"]["cost"]["max"] == pytest.approx(100 * (9 / 8 - 1))


def test_cost_is_busy_cpu_seconds_per_gigabit() -> None:
    assert pp.cost(80.0, 10.0, cpus=2) == pytest.approx(0.16)  # 1.6 CPUs busy at 10 Gbit/s
    assert pp.cost(40.0, 5.0, cpus=4) == pytest.approx(0.32)


@pytest.mark.parametrize("args", [["--seconds", "3", "--sample", "3"], ["--policies", "0"],
                                  ["--rounds", "0"]])
def test_bad_arguments_get_one_line_and_no_lab(args: list[str]) -> None:
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "profile_policy.py"), *args],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0
    assert proc.stderr.strip() == ("error: --policies >= 1, --rounds >= 1 and "
                                   "0 < --sample < --seconds")
