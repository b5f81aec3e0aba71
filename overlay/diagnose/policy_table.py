"""``overlayctl diagnose``'s ``policy-table`` check: the kernel's ``inet overlay-policy``
table against the one overlayd would load now.

The expected table is compiled exactly as the daemon does: the judged policies,
namespaces and pods in etcd (``overlay.diagnose.policy_state``), this node's own pods
(``overlay.policy.build.assemble``), ``overlay.policy.nft.compile_table``. Both texts go
through one normalizer (:func:`parse_table`) that nft's reformatting, counter values and
handles cannot fool: sets become their properties and their elements (addresses and ports
as merged integer ranges, so ``10.0.0.0/24`` and ``10.0.0.0-10.0.0.255`` are one), chains
their hook header (devices sorted) and their rules in order (whitespace and quotes
folded), counters their names. :func:`diff_tables` names the first differences. A table
being replaced (a pod just added) may differ for a moment: :func:`check_twice` compares
again ``RECHECK`` seconds later before failing.
"""

from __future__ import annotations

import inspect
import logging
import os
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from ipaddress import IPv6Network, ip_address, ip_network
from typing import Any, TypeVar

from overlay.diagnose.state import FAIL, PASS, SKIP, WARN, CheckResult
from overlay.lease import IPNetwork
from overlay.policy import nft
from overlay.util.proc import FAILED, ProgramError, run

log = logging.getLogger(__name__)

NAME = "policy-table"
EXPECTED = (f"the kernel's {nft.FAMILY} {nft.TABLE} table is the one overlayd compiles "
            "from etcd's policies, namespaces and pods")
FIX = "restart overlayd on this node; see its log for why its table was not loaded"
RECHECK = 0.5  # seconds before the second look
SHOWN = 5  # differences named in FOUND

Component = tuple[Any, ...]


T = TypeVar("T")


@dataclass(frozen=True)
class NftSet:
    props: frozenset[str]
    elements: frozenset[tuple[Component, ...]]


@dataclass(frozen=True)
class Chain:
    header: tuple[str, ...]
    rules: tuple[str, ...]


@dataclass
class Table:
    sets: dict[str, NftSet] = field(default_factory=dict)
    counters: set[str] = field(default_factory=set)
    chains: dict[str, Chain] = field(default_factory=dict)
    other: set[str] = field(default_factory=set)  # maps, flags...: compared as text

    @property
    def empty(self) -> bool:
        return not (self.sets or self.counters or self.chains or self.other)

    def rule_count(self) -> int:
        return sum(len(c.rules) for c in self.chains.values())


# ---- the normalizer ------------------------------------------------------------------

def _split(text: str, seps: str) -> list[str]:
    """``text`` cut at any of ``seps`` outside braces and double quotes."""
    out: list[str] = []
    cur: list[str] = []
    depth, quoted = 0, False
    for ch in text:
        if ch == '"':
            quoted = not quoted
        elif not quoted and ch == "{":
            depth += 1
        elif not quoted and ch == "}":
            depth -= 1
        if not quoted and depth == 0 and ch in seps:
            out.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    out.append("".join(cur))
    return [s.strip() for s in out if s.strip()]


def _block(text: str, start: int) -> tuple[str, int]:
    """The text inside the brace opening at ``start``, and the index after its close."""
    depth, quoted = 0, False
    for i in range(start, len(text)):
        ch = text[i]
        if ch == '"':
            quoted = not quoted
        elif not quoted and ch == "{":
            depth += 1
        elif not quoted and ch == "}":
            depth -= 1
            if depth == 0:
                return text[start + 1:i], i + 1
    raise ValueError("unbalanced braces")


def _fold(stmt: str) -> str:
    """Whitespace and quotes folded; an anonymous counter's values dropped."""
    return _COUNTER_VALUES.sub("counter", " ".join(stmt.replace('"', "").split()))


def _strip_comments(text: str) -> str:
    """nft's ``# handle N`` and other comments (outside quotes) go."""
    out = []
    for line in text.splitlines():
        quoted = False
        for i, ch in enumerate(line):
            if ch == '"':
                quoted = not quoted
            elif ch == "#" and not quoted:
                line = line[:i]
                break
        out.append(line)
    return "\n".join(out)


_COUNTER_VALUES = re.compile(r"\bcounter packets \d+ bytes \d+")


_RANGE = re.compile(r"^(\S+?)-(\S+)$")


def _int_range(text: str) -> tuple[int, int] | None:
    if text.isdigit():
        return int(text), int(text)
    m = _RANGE.match(text)
    if m and m[1].isdigit() and m[2].isdigit():
        return int(m[1]), int(m[2])
    return None


_KINDS = {4: "ip", 6: "ip6"}


def _component(text: str) -> Component:
    """An element's part: ("ip", lo, hi) or ("ip6", lo, hi) (IPv4, IPv6), ("n", lo, hi),
    or ("s", text)."""
    text = text.strip().replace('"', "")
    if (r := _int_range(text)) is not None:
        return ("n", *r)
    try:
        if (m := _RANGE.match(text)) and "/" not in text:
            lo, hi = ip_address(m[1]), ip_address(m[2])
            if lo.version != hi.version:
                return ("s", text)
            return (_KINDS[lo.version], int(lo), int(hi))
        net = ip_network(text, strict=False)
        return (_KINDS[net.version], int(net.network_address), int(net.broadcast_address))
    except ValueError:
        return ("s", text)


def _merge(elements: list[tuple[Component, ...]]) -> list[tuple[Component, ...]]:
    """Single-part address or number elements as merged ranges (an interval set's)."""
    if not elements or any(len(e) != 1 or e[0][0] not in ("ip", "ip6", "n")
                           for e in elements) or len({e[0][0] for e in elements}) != 1:
        return elements
    kind = elements[0][0][0]
    spans = sorted((e[0][1], e[0][2]) for e in elements)
    out: list[list[int]] = []
    for lo, hi in spans:
        if out and lo <= out[-1][1] + 1:
            out[-1][1] = max(out[-1][1], hi)
        else:
            out.append([lo, hi])
    return [((kind, lo, hi),) for lo, hi in out]


def _parse_set(body: str) -> NftSet:
    props, elements = set(), []
    for stmt in _split(body, "\n;"):
        key, _, rest = stmt.partition("=")
        if key.strip() == "elements":
            inner, _ = _block(rest, rest.index("{"))
            for elem in _split(inner, ","):
                parts = [p.split()[0] if p.split() else p for p in elem.split(" . ")]
                elements.append(tuple(_component(p) for p in parts))
        else:
            props.add(_fold(stmt))
    return NftSet(frozenset(props), frozenset(_merge(elements)))


_DEVICE = re.compile(r"\bdevice ([^ ]+)")
_DEVICES = re.compile(r"\bdevices = \{([^}]*)\}")


def _header(stmt: str) -> str:
    s = _fold(stmt)
    s = _DEVICE.sub(lambda m: f"devices = {{ {m[1]} }}", s)
    return _DEVICES.sub(lambda m: "devices = { " + ", ".join(
        sorted(d.strip() for d in m[1].split(",") if d.strip())) + " }", s)


def _parse_chain(body: str) -> Chain:
    header, rules = [], []
    for stmt in _split(body, "\n;"):
        folded = _fold(stmt)
        if folded.startswith(("type ", "policy ", "comment ", "devices ", "device ")):
            header.append(_header(stmt))
        else:
            rules.append(folded)
    return Chain(tuple(header), tuple(rules))


def parse_table(text: str) -> Table | None:
    """Our table in ``text`` (an ``nft list`` output or a compiled table), normalized;
    None when ``text`` holds no such table."""
    text = _strip_comments(text)
    m = re.search(rf"table\s+{nft.FAMILY}\s+{re.escape(nft.TABLE)}\s*{{", text)
    if m is None:
        return None
    body, _ = _block(text, m.end() - 1)
    table = Table()
    for stmt in _split(body, "\n;"):
        words = stmt.split()
        if len(words) >= 2 and words[0] in ("set", "counter", "chain") and "{" in stmt:
            inner, _ = _block(stmt, stmt.index("{"))
            if words[0] == "set":
                table.sets[words[1]] = _parse_set(inner)
            elif words[0] == "counter":
                table.counters.add(words[1])
            else:
                table.chains[words[1]] = _parse_chain(inner)
        else:
            table.other.add(_fold(stmt))
    return table


# ---- the comparison --------------------------------------------------------------------

def _show(e: tuple[Component, ...]) -> str:
    def one(c: Component) -> str:
        if c[0] == "s":
            return str(c[1])
        if c[0] in ("ip", "ip6"):
            return nft.range_text((c[1], c[2]), 6 if c[0] == "ip6" else 4)
        return str(c[1]) if c[1] == c[2] else f"{c[1]}-{c[2]}"
    return " . ".join(one(c) for c in e)


def _ranges(elements: frozenset[tuple[Component, ...]]) -> list[tuple[str, int, int]] | None:
    """An interval set's merged ranges, None for any other set."""
    if not elements or any(len(e) != 1 or e[0][0] not in ("ip", "ip6", "n")
                           for e in elements) or len({e[0][0] for e in elements}) != 1:
        return None
    return sorted((e[0][0], e[0][1], e[0][2]) for e in elements)


def _minus(a: frozenset[tuple[Component, ...]], b: frozenset[tuple[Component, ...]]
           ) -> list[tuple[Component, ...]]:
    """The elements of ``a`` not in ``b``; for address or number ranges, the parts of
    ``a``'s ranges that ``b``'s do not cover."""
    ra, rb = _ranges(a), _ranges(b)
    if ra is None or rb is None:
        return sorted(a - b)
    out: list[tuple[Component, ...]] = []
    for kind, lo, hi in ra:
        for _, blo, bhi in rb:
            if bhi < lo or blo > hi:
                continue
            if blo > lo:
                out.append(((kind, lo, blo - 1),))
            lo = bhi + 1
            if lo > hi:
                break
        if lo <= hi:
            out.append(((kind, lo, hi),))
    return out


def _diff_named(kind: str, want: Mapping[str, T], got: Mapping[str, T],
                diff: Callable[[str, T, T], list[str]]) -> list[str]:
    """Sets or chains by name: missing, extra, or ``diff`` of the two."""
    out = []
    for name in sorted(want.keys() | got.keys()):
        a, b = want.get(name), got.get(name)
        if b is None:
            out.append(f"{kind} {name} missing")
        elif a is None:
            out.append(f"{kind} {name} extra (overlayd compiles no such {kind})")
        else:
            out += diff(name, a, b)
    return out


def _diff_set(name: str, a: NftSet, b: NftSet) -> list[str]:
    out = []
    if a.props != b.props:
        out.append(f"set {name}: {'; '.join(sorted(b.props))} instead of "
                   f"{'; '.join(sorted(a.props))}")
    out += [f"set {name}: element {_show(e)} missing" for e in _minus(a.elements, b.elements)]
    out += [f"set {name}: extra element {_show(e)}" for e in _minus(b.elements, a.elements)]
    return out


def _diff_chain(name: str, a: Chain, b: Chain) -> list[str]:
    out = []
    if a.header != b.header:
        out.append(f"chain {name}: header {'; '.join(b.header) or '(none)'} instead of "
                   f"{'; '.join(a.header) or '(none)'}")
    missing = [r for r in a.rules if r not in b.rules]
    extra = [r for r in b.rules if r not in a.rules]
    out += [f"chain {name}: rule missing: {r}" for r in missing]
    out += [f"chain {name}: extra rule: {r}" for r in extra]
    if not missing and not extra and a.rules != b.rules:
        i = next(i for i, (x, y) in enumerate(zip(a.rules, b.rules, strict=False)) if x != y)
        out.append(f"chain {name}: rules out of order from rule {i + 1} ({b.rules[i]})")
    return out


def diff_tables(want: Table, got: Table) -> list[str]:
    """What ``got`` (the kernel's) lacks or has beyond ``want`` (the compiled), in order:
    sets, counters, chains, anything else."""
    out = _diff_named("set", want.sets, got.sets, _diff_set)
    out += [f"counter {c} missing" for c in sorted(want.counters - got.counters)]
    out += [f"extra counter {c}" for c in sorted(got.counters - want.counters)]
    out += _diff_named("chain", want.chains, got.chains, _diff_chain)
    out += [f"extra: {s}" for s in sorted(got.other - want.other)]
    out += [f"missing: {s}" for s in sorted(want.other - got.other)]
    return out


def judge_table(expected: str, kernel: str | None) -> CheckResult:
    """Pure: the compiled table's text against the kernel's listing (None: no table)."""
    want = parse_table(expected)
    assert want is not None, "a compiled table always holds ours"
    got = parse_table(kernel) if kernel is not None else None
    if got is None:
        if want.empty:
            return CheckResult(NAME, PASS, EXPECTED, "no policy selects a pod of this "
                               "node, and there is no table (nothing is filtered)")
        return CheckResult(NAME, FAIL, EXPECTED, f"no {nft.FAMILY} {nft.TABLE} table in the "
                           f"kernel, but policies select pods of this node "
                           f"({len(want.sets)} sets, {want.rule_count()} rules expected)", FIX)
    diffs = diff_tables(want, got)
    if not diffs:
        if want.empty:
            return CheckResult(NAME, PASS, EXPECTED, "empty table: no policy selects a pod "
                               "of this node")
        return CheckResult(NAME, PASS, EXPECTED, f"as compiled: {len(want.sets)} sets, "
                           f"{len(want.counters)} counters, {len(want.chains)} chains, "
                           f"{want.rule_count()} rules")
    more = f"; and {len(diffs) - SHOWN} more" if len(diffs) > SHOWN else ""
    return CheckResult(NAME, FAIL, EXPECTED, f"{len(diffs)} difference(s): "
                       + "; ".join(diffs[:SHOWN]) + more, FIX)


# ---- the edges ---------------------------------------------------------------------------

def read_kernel_table() -> str | None:
    """``nft list table inet overlay-policy`` (None: no such table); ProgramError when
    nft is missing or fails otherwise."""
    argv = ["nft", "list", "table", nft.FAMILY, nft.TABLE]
    cp = run(argv, timeout=10.0)
    if cp.returncode == 0:
        return cp.stdout
    if "No such file or directory" in cp.stderr:
        return None
    lines = cp.stderr.strip().splitlines()
    raise ProgramError(f"{' '.join(argv)}: {lines[0] if lines else cp.returncode}", argv,
                       FAILED, cp.returncode, cp.stderr)


def compile_expected(inputs: Any, log_denied: bool) -> nft.CompiledTable:
    """``compile_table`` as overlayd calls it (``log_denied`` only where it exists)."""
    kw: dict[str, Any] = {}
    if log_denied and "log_denied" in inspect.signature(nft.compile_table).parameters:
        kw["log_denied"] = True
    return nft.compile_table(inputs.local, inputs.pods, inputs.namespaces, inputs.policies,
                             **kw)


def check_twice(expected: Callable[[], str], kernel: Callable[[], str | None],
                wait: Callable[[float], None] = time.sleep) -> CheckResult:
    """Compare; on a difference look again ``RECHECK`` s later (a table being replaced)."""
    result = judge_table(expected(), kernel())
    if result.status != FAIL:
        return result
    wait(RECHECK)
    return judge_table(expected(), kernel())


def skipped(why: str) -> CheckResult:
    return CheckResult(NAME, SKIP, EXPECTED, why)


def node_of_subnet(records: Any, subnet: IPNetwork | None) -> str | None:
    """The one node name the registry's pods in ``subnet`` carry (None: none or several);
    a dual-stack pod is known by its addresses of ``subnet``'s family."""
    names = {r.node for r in records if subnet is not None
             and (own := [ip for ip in r.ips if ip.version == subnet.version])
             and all(ip in subnet for ip in own)}
    return names.pop() if len(names) == 1 else None


def check_policy_table(etcd: Any, cluster: Any, own_subnet: IPNetwork | None,
                       node_name: str | None, log_denied: bool = False, *,
                       data_dir: str, own_ipv6: IPv6Network | None = None) -> CheckResult:
    """Gather etcd's policy state and this node's attachments (the CNI ``data_dir``),
    compile this node's table, compare with the kernel's (twice, RECHECK apart, before
    failing)."""
    from overlay.cni.attachments import RUNNING_GRACE, ScanError, scan_local
    from overlay.diagnose.policy_state import gather_policy
    from overlay.policy.build import QUARANTINE, UNKNOWN_NAMESPACE, assemble

    if not cluster.available:
        return skipped(f"etcd not read ({cluster.error or 'no network config'})")
    if own_subnet is None:
        return skipped("this node's subnet is unknown (no lease, no subnet.env)")
    states = [gather_policy(etcd, cluster)]
    if states[0].error:
        return skipped(f"policy objects not read: {states[0].error}")
    if not data_dir:
        return skipped("this node's CNI data dir is unknown (no CNI config of ours)")
    node = node_name or node_of_subnet(states[0].records, own_subnet) or ""

    def expected() -> str:
        state = states.pop() if states else gather_policy(etcd, cluster)
        if state.error:
            raise ProgramError(f"policy objects not read: {state.error}", ["etcd"], FAILED)
        try:
            attached = scan_local(data_dir, own_subnet, lambda _what, _why: None, own_ipv6,
                                  grace=RUNNING_GRACE) if os.path.lexists(data_dir) else {}
        except ScanError as e:
            raise ProgramError(f"pods on disk not read: {e}", [data_dir], FAILED) from e
        inputs = assemble(state.policies, state.namespaces, state.records, node, own_subnet,
                          own_ipv6, attached=attached)
        quarantined[:] = sorted(p.name for p in inputs.pods if p.namespace == UNKNOWN_NAMESPACE
                                ) if QUARANTINE in inputs.policies else []
        return compile_expected(inputs, log_denied).text

    quarantined: list[str] = []  # container IDs of the pods of unknown identity
    try:
        result = check_twice(expected, read_kernel_table)
    except ProgramError as e:
        return skipped(f"cannot compare: {e}")
    if result.status != PASS or not quarantined:
        return result
    return CheckResult(
        NAME, WARN, EXPECTED,
        f"{result.found}; {len(quarantined)} pod(s) of unknown identity (metadata file "
        f"missing or unusable) isolated both ways: {', '.join(quarantined[:5])}"
        f"{', ...' if len(quarantined) > 5 else ''}",
        f"see overlayd's log for what is wrong with each file under {data_dir}; restore it, "
        "or delete and recreate the pod")
