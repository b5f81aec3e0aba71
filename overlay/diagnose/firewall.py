"""Which firewall rules in a node's namespace would drop VXLAN (UDP 8472) traffic.

Reads ``nft -j list ruleset`` (native nftables tables) and ``iptables-save`` /
``iptables-legacy-save`` (tables iptables manages: with the nft backend they appear in
nft's ruleset too, as ``xt`` expressions nft cannot show, so they are judged from
iptables-save's text instead).  A rule counts when it drops or rejects the port
explicitly, or drops everything unconditionally; an input/output hook whose policy is
drop with no rule accepting the port is a warning.  Every finding carries the command
that removes it.  The parsers are pure; ``read_firewall`` runs the tools.

overlayd's own NetworkPolicy table (``inet overlay-policy``) is not judged here: its drops
filter forwarded pod connections only (never the node's VXLAN packets), and the
``policy-table`` check compares it whole with what overlayd compiles.
"""

from __future__ import annotations

import json
import shlex
import shutil
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from overlay.policy.nft import FAMILY as POLICY_FAMILY, TABLE as POLICY_TABLE
from overlay.util.proc import run_quiet


@dataclass(frozen=True)
class FirewallRule:
    source: str  # nft | iptables | iptables-legacy
    where: str  # "ip filter INPUT"
    text: str  # the rule as the operator would recognise it
    fix: str  # the command that removes it


@dataclass
class FirewallState:
    drops: list[FirewallRule] = field(default_factory=list)  # rules dropping the VXLAN port
    policy_drops: list[FirewallRule] = field(default_factory=list)  # chains with policy drop
    errors: list[str] = field(default_factory=list)


IPTABLES_TABLES = ("filter", "raw", "mangle")
NFT_HOOKS = ("prerouting", "input", "output", "postrouting")


def _port_in(right: Any, port: int) -> bool | None:
    """Does an nft match's right-hand side include ``port``? None: not a port expression."""
    if isinstance(right, int):
        return right == port
    if isinstance(right, dict) and "range" in right:
        lo, hi = right["range"]
        return isinstance(lo, int) and isinstance(hi, int) and lo <= port <= hi
    if isinstance(right, dict) and "set" in right:
        return any(_port_in(x, port) for x in right["set"])
    if isinstance(right, list):
        return any(_port_in(x, port) for x in right)
    return None


def _nft_rule_drops(expr: list[dict[str, Any]], port: int,
                    nfprotos: tuple[str, ...] = ("ipv4", "ipv6")) -> bool:
    """True when an nft rule drops/rejects UDP ``port`` (explicitly or unconditionally);
    ``nfprotos``: the families our VXLAN runs over (an inet rule of ``meta nfproto
    ipv6`` alone cannot drop an IPv4-only node's)."""
    verdict, port_hit, conditions = None, False, 0
    for e in expr:
        if len(e) != 1:
            conditions += 1
            continue
        key, val = next(iter(e.items()))
        if key in ("drop", "reject"):
            verdict = key
        elif key == "xt" and isinstance(val, dict) and val.get("type") == "target":
            if str(val.get("name", "")).upper() in ("DROP", "REJECT"):
                verdict = "drop"
        elif key in ("accept", "jump", "goto", "return", "queue"):
            return False
        elif key == "match":
            left, right, op = val.get("left", {}), val.get("right"), val.get("op", "==")
            negate = op == "!="
            if (isinstance(left, dict) and "payload" in left
                    and left["payload"].get("field") == "dport"):
                hit = _port_in(right, port)
                if left["payload"].get("protocol") not in ("udp", "th") or hit is None:
                    return False
                if hit == negate:
                    return False
                port_hit = True
            elif _is_proto_match(left):
                protos = right.get("set", []) if isinstance(right, dict) else [right]
                if ("udp" in protos) == negate:
                    return False
            elif isinstance(left, dict) and left.get("meta", {}).get("key") == "nfproto":
                families = right.get("set", []) if isinstance(right, dict) else [right]
                if any(f in families for f in nfprotos) == negate:
                    return False
            else:
                conditions += 1
        elif key == "xt":
            conditions += 1
    return verdict is not None and (port_hit or conditions == 0)


def _is_proto_match(left: Any) -> bool:
    if not isinstance(left, dict):
        return False
    if "meta" in left:
        return left["meta"].get("key") in ("l4proto", "protocol")
    pl = left.get("payload", {})
    return pl.get("protocol") in ("ip", "ip6") and pl.get("field") in ("protocol", "nexthdr")


def parse_nft_ruleset(text: str, port: int, skip_tables: Iterable[tuple[str, str]] = (),
                      families: tuple[str, ...] = ("ip", "inet")) -> FirewallState:
    """Rules in ``nft -j list ruleset`` that drop UDP ``port``, and drop-policy hooks, in
    the tables of ``families`` (``ip6`` too on a dual-stack node: VXLAN over IPv6)."""
    out = FirewallState()
    try:
        items = json.loads(text).get("nftables", [])
    except (ValueError, AttributeError) as e:
        out.errors.append(f"nft JSON unreadable: {e}")
        return out
    skip = {*skip_tables, (POLICY_FAMILY, POLICY_TABLE)}
    # the families our VXLAN runs over: an IPv6-only node's ``families`` have no "ip"
    nfprotos = (("ipv4",) if "ip" in families else ()) + (("ipv6",) if "ip6" in families
                                                          else ())
    chains: dict[tuple[str, str, str], dict[str, Any]] = {}
    accepted: set[tuple[str, str, str]] = set()
    for item in items:
        if "chain" in item:
            c = item["chain"]
            chains[(c["family"], c["table"], c["name"])] = c
    for item in items:
        r = item.get("rule")
        if not r or (r["family"], r["table"]) in skip:
            continue
        key = (r["family"], r["table"], r["chain"])
        hook = chains.get(key, {}).get("hook")
        if r["family"] not in families or (hook is not None and hook not in NFT_HOOKS):
            continue  # regular chains (hook None) count: a base chain may jump to them
        expr = r.get("expr", [])
        where = f"{r['family']} {r['table']} {r['chain']}"
        if _nft_rule_drops(expr, port, nfprotos):
            out.drops.append(FirewallRule(
                "nft", where, f"handle {r.get('handle')}: {_nft_text(expr)}",
                f"nft delete rule {where} handle {r.get('handle')}"))
        elif _nft_rule_accepts(expr, port, nfprotos):
            accepted.add(key)
    for key, c in chains.items():
        fam, table, name = key
        if (fam, table) in skip or fam not in families:
            continue
        if (c.get("hook") in ("input", "output") and c.get("policy") == "drop"
                and key not in accepted):
            where = f"{fam} {table} {name}"
            out.policy_drops.append(FirewallRule(
                "nft", where, f"policy drop (hook {c['hook']}) and no rule accepts UDP {port}",
                f"nft insert rule {where} udp dport {port} accept"))
    return out


def _nft_rule_accepts(expr: list[dict[str, Any]], port: int,
                      nfprotos: tuple[str, ...] = ("ipv4", "ipv6")) -> bool:
    flipped = [({"drop": None} if "accept" in e else e) for e in expr]
    return any("accept" in e for e in expr) and _nft_rule_drops(flipped, port, nfprotos)


def _nft_text(expr: list[dict[str, Any]]) -> str:
    parts = []
    for e in expr:
        for key, val in e.items():
            if key == "counter":
                continue
            if key == "match":
                left = val.get("left", {})
                lname = " ".join(str(v) for d in left.values() if isinstance(d, dict)
                                 for v in d.values()) if isinstance(left, dict) else str(left)
                parts.append(f"{lname} {val.get('op', '==')} {json.dumps(val.get('right'))}")
            elif key == "xt":
                parts.append(f"xt {val.get('type')} {val.get('name')}")
            else:
                parts.append(key)
    return " ".join(parts)


def parse_iptables_save(text: str, port: int, source: str = "iptables") -> FirewallState:
    """Rules in ``iptables-save`` output that drop UDP ``port``, and DROP policies."""
    out = FirewallState()
    table = ""
    policies: dict[str, str] = {}
    accepted: set[tuple[str, str]] = set()
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("*"):
            table = line[1:]
            continue
        if table not in IPTABLES_TABLES:
            continue
        if line.startswith(":"):
            name, policy = (line[1:].split() + ["-"])[:2]
            policies[f"{table} {name}"] = policy
            continue
        if not line.startswith("-A "):
            continue
        try:
            toks = shlex.split(line)
        except ValueError:
            continue
        chain = toks[1]
        verdict = _ipt_verdict(toks)
        matches = _ipt_matches_port(toks[2:], port)
        if verdict in ("DROP", "REJECT") and matches:
            rest = " ".join(shlex.quote(t) for t in toks[2:])
            out.drops.append(FirewallRule(source, f"{table} {chain}", line,
                                          f"{source} -t {table} -D {chain} {rest}"))
        elif verdict == "ACCEPT" and matches:
            accepted.add((table, chain))
    for where, policy in policies.items():
        table, chain = where.split(" ", 1)
        if policy == "DROP" and chain in ("INPUT", "OUTPUT") and (table, chain) not in accepted:
            out.policy_drops.append(FirewallRule(
                source, where, f":{chain} DROP and no rule accepts UDP {port}",
                f"{source} -t {table} -I {chain} -p udp --dport {port} -j ACCEPT"))
    return out


def _ipt_verdict(toks: list[str]) -> str | None:
    for i, t in enumerate(toks):
        if t in ("-j", "--jump") and i + 1 < len(toks):
            return toks[i + 1].upper()
    return None


def _ipt_matches_port(toks: list[str], port: int) -> bool:
    """The rule matches UDP ``port``: explicitly, or with no condition at all."""
    conditions, port_hit, i = 0, False, 0
    while i < len(toks):
        t = toks[i]
        neg = t == "!"
        if neg:
            i += 1
            t = toks[i] if i < len(toks) else ""
        val = toks[i + 1] if i + 1 < len(toks) else ""
        if t in ("-p", "--protocol"):
            if (val.lower() in ("udp", "17", "all")) == neg:
                return False
            i += 2
        elif t in ("--dport", "--destination-port", "--dports", "--destination-ports"):
            hit = any(_ipt_port_range(p, port) for p in val.split(","))
            if hit == neg:
                return False
            port_hit = True
            i += 2
        elif t in ("-j", "--jump", "-g", "--goto", "-m", "--match"):
            i += 2  # a verdict or a match module's name: neither is a condition itself
        elif t.startswith("-"):
            conditions += 1
            i += 2 if val and not val.startswith("-") else 1
        else:
            i += 1
    return port_hit or conditions == 0


def _ipt_port_range(text: str, port: int) -> bool:
    lo, _, hi = text.partition(":")
    try:
        return int(lo or 0) <= port <= int(hi or lo or 65535)
    except ValueError:
        return False


def merge_firewall(*states: FirewallState) -> FirewallState:
    out = FirewallState()
    for s in states:
        out.drops += s.drops
        out.policy_drops += s.policy_drops
        out.errors += s.errors
    return out


def read_firewall(port: int, ipv6: bool = False, ipv4: bool = True) -> FirewallState:
    """nft's ruleset (native tables) plus iptables-save for tables iptables manages;
    ``ipv6`` (VXLAN also runs over IPv6): ip6 tables and ip6tables-save too; ``ipv4``
    False (an IPv6-only node, whose VXLAN runs over IPv6 alone): no IPv4 tables."""
    states, skip = [], set()
    sources = ((("iptables", "iptables-legacy") if ipv4 else ())
               + (("ip6tables", "ip6tables-legacy") if ipv6 else ()))
    for source in sources:
        exe = shutil.which(f"{source}-save")
        if exe is None:
            continue
        rc, out, err = run_quiet([exe])
        if rc != 0:
            states.append(FirewallState(errors=[f"{source}-save: {err or rc}"]))
            continue
        if source in ("iptables", "ip6tables"):  # the nft backend's tables: judged here
            family = "ip6" if source == "ip6tables" else "ip"
            skip |= {(family, line[1:].strip()) for line in out.splitlines()
                     if line.startswith("*")}
        states.append(parse_iptables_save(out, port, source))
    if shutil.which("nft"):
        rc, out, err = run_quiet(["nft", "-j", "list", "ruleset"])
        if rc == 0:
            families = (("ip",) if ipv4 else ()) + ("inet",) + (("ip6",) if ipv6 else ())
            states.append(parse_nft_ruleset(out, port, skip, families))
        else:
            states.append(FirewallState(errors=[f"nft: {err or rc}"]))
    return merge_firewall(*states)
