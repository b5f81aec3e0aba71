"""networking.k8s.io/v1 NetworkPolicy as frozen typed values, parsed and validated as
the Kubernetes API server does (``pkg/apis/networking/validation``), so a manifest that
``kubectl apply`` accepts is accepted here and one it refuses is refused here.

Everything that reaches the compiler passed :func:`parse_policy`: the CLI's manifests and
every object read back from etcd (any node can write etcd; a malformed object is rejected
alone and never widens what is allowed). A problem is one :class:`PolicyError` naming the
field, as the API server's ``spec.ingress[0].ports[1].endPort: ...``. Unknown fields are
errors (kubectl's default strict field validation). Pure: no I/O.
"""

from __future__ import annotations

import datetime
import functools
import json
import math
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_network
from typing import TYPE_CHECKING, Any

from overlay.cluster.keys import dns_label_problem, dns_subdomain_problem
from overlay.errors import ConfigError

if TYPE_CHECKING:
    import yaml

API_VERSION = "networking.k8s.io/v1"
KIND = "NetworkPolicy"
INGRESS, EGRESS = "Ingress", "Egress"
PROTOCOLS = ("TCP", "UDP", "SCTP")
IN, NOT_IN, EXISTS, DOES_NOT_EXIST = "In", "NotIn", "Exists", "DoesNotExist"
DEFAULT_NAMESPACE = "default"
# A manifest file is read whole; kubectl's own limit on a request body is 3 MiB.
MAX_MANIFEST_BYTES = 3 * 1024 * 1024
# How many nodes a manifest's YAML aliases may repeat beyond those its text writes out:
# forty kilobytes of nested aliases otherwise expand to hundreds of millions of nodes, and
# validating them takes minutes and gigabytes (kubectl refuses "excessive aliasing" too).
MAX_ALIAS_NODES = 1_000_000

IPNetwork = IPv4Network | IPv6Network
IPAddress = IPv4Address | IPv6Address

# Kubernetes' qualified-name and label-value rules (apimachinery validation).
_QNAME_RE = re.compile(r"([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]")
_PORT_NAME_RE = re.compile(r"[-a-z0-9]+")
_META_FIELDS = frozenset({
    "name", "namespace", "labels", "annotations", "uid", "resourceVersion", "generation",
    "creationTimestamp", "managedFields", "finalizers", "ownerReferences", "selfLink",
    "deletionTimestamp", "deletionGracePeriodSeconds", "generateName"})


class PolicyError(ConfigError):
    """A NetworkPolicy (or a manifest holding some) is not valid; names the field."""


def _fail(path: str, why: str) -> PolicyError:
    return PolicyError(f"{path}: {why}" if path else why)


# -- label selectors -------------------------------------------------------------------

@dataclass(frozen=True)
class Requirement:
    """One matchExpressions entry."""
    key: str
    operator: str
    values: frozenset[str]

    def matches(self, labels: Mapping[str, str]) -> bool:
        if self.operator == EXISTS:
            return self.key in labels
        if self.operator == DOES_NOT_EXIST:
            return self.key not in labels
        if self.operator == IN:
            return self.key in labels and labels[self.key] in self.values
        return self.key not in labels or labels[self.key] not in self.values  # NotIn


@dataclass(frozen=True)
class LabelSelector:
    """matchLabels AND matchExpressions; the empty selector matches everything."""
    match_labels: tuple[tuple[str, str], ...] = ()
    match_expressions: tuple[Requirement, ...] = ()

    def matches(self, labels: Mapping[str, str]) -> bool:
        return (all(labels.get(k) == v for k, v in self.match_labels)
                and all(r.matches(labels) for r in self.match_expressions))

    @property
    def empty(self) -> bool:
        return not self.match_labels and not self.match_expressions


# -- peers, ports, rules, the policy ---------------------------------------------------

@dataclass(frozen=True)
class IPBlock:
    cidr: IPNetwork
    excepts: tuple[IPNetwork, ...] = ()

    def contains(self, ip: IPAddress) -> bool:
        return (ip.version == self.cidr.version and ip in self.cidr
                and not any(ip in e for e in self.excepts))


@dataclass(frozen=True)
class Peer:
    """Either selectors (both given: both must match) or an ipBlock, never both."""
    pod_selector: LabelSelector | None = None
    namespace_selector: LabelSelector | None = None
    ip_block: IPBlock | None = None


@dataclass(frozen=True)
class PolicyPort:
    """``port`` None: every port of ``protocol``; a str: a named port of the destination
    pod; ``end_port``: the inclusive top of a numeric range."""
    protocol: str = "TCP"
    port: int | str | None = None
    end_port: int | None = None


@dataclass(frozen=True)
class Rule:
    """One ingress or egress rule. ``peers`` None: ``from``/``to`` absent or empty (every
    peer); ``ports`` empty: every port and protocol."""
    peers: tuple[Peer, ...] | None = None
    ports: tuple[PolicyPort, ...] = ()


@dataclass(frozen=True)
class NetworkPolicy:
    """A validated policy. ``ingress``/``egress`` hold only the rules in effect: those of a
    direction not in ``policy_types`` are ignored, as Kubernetes ignores them."""
    namespace: str
    name: str
    pod_selector: LabelSelector
    policy_types: frozenset[str]
    ingress: tuple[Rule, ...] = ()
    egress: tuple[Rule, ...] = ()
    # The object as it is stored (namespace filled in): canonical JSON.
    source: str = ""

    @property
    def ref(self) -> str:
        return f"{self.namespace}/{self.name}"

    def manifest(self) -> dict[str, Any]:
        return dict(json.loads(self.source))


# -- field readers ----------------------------------------------------------------------

def _mapping(value: object, path: str, allowed: Sequence[str] | frozenset[str]) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise _fail(path, f"must be an object, not {_kind(value)}")
    for k in value:
        if not isinstance(k, str) or k not in allowed:
            name = _key(k) if isinstance(k, str) else shown(k)
            raise _fail(f"{path}.{name}" if path else name, "unknown field")
    return value


def _list(value: object, path: str) -> list[Any]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise _fail(path, f"must be a list, not {_kind(value)}")
    return value


def _string(value: object, path: str) -> str:
    if not isinstance(value, str):
        raise _fail(path, f"must be a string, not {_kind(value)}")
    return value


def _int(value: object, path: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise _fail(path, f"must be an integer, not {_kind(value)}")
    return value


def _kind(value: object) -> str:
    """What ``value`` is in YAML/JSON terms (never a Python repr): YAML turns an unquoted
    2001-01-01 into a date, ``!!binary`` into bytes, ``!!set`` into a set."""
    if value is None:
        return "null"
    if isinstance(value, datetime.datetime):
        return "a timestamp"
    if isinstance(value, datetime.date):
        return "a date"
    return {bool: "a boolean", int: "a number", float: "a number", str: "a string",
            list: "a list", tuple: "a list", dict: "an object", bytes: "binary data",
            set: "a set"}.get(type(value), f"a YAML {type(value).__name__}")


MAX_SHOWN = 80  # characters of a value an error quotes


def shown(value: object) -> str:
    """A value as an error quotes it: a string quoted, escaped to one line and cut at
    MAX_SHOWN characters (a 100 000-character name is not echoed whole); a scalar as
    JSON writes it; anything else by its kind."""
    if isinstance(value, str):
        if len(value) <= MAX_SHOWN:
            return repr(value)
        return f"{value[:MAX_SHOWN]!r}..."
    if isinstance(value, bool) or value is None:
        return json.dumps(value)
    if isinstance(value, int) and abs(value) < 10**30 or isinstance(value, float):
        return repr(value)
    return _kind(value)


def _key(key: str) -> str:
    """A field name inside an error's path: bounded, one line."""
    return key if len(key) <= MAX_SHOWN and key.isprintable() else shown(key)


def _check_json(value: object, path: str) -> None:
    """Every value a policy stores (``metadata`` fields are kept as given) must be JSON:
    a YAML date, binary, set or non-finite number is refused naming its field."""
    todo: list[tuple[object, str]] = [(value, path)]
    while todo:
        v, where = todo.pop()
        if isinstance(v, dict):
            todo.extend((item, f"{where}.{_key(k)}" if where else _key(k))
                        for k, item in v.items())
        elif isinstance(v, list):
            todo.extend((item, f"{where}[{i}]") for i, item in enumerate(v))
        elif isinstance(v, float) and not math.isfinite(v):
            raise _fail(where, f"must be a finite number, not {v!r}")
        elif not (v is None or isinstance(v, str | int | float)):
            raise _fail(where, f"must be a JSON value, not {_kind(v)} (quote it to make it "
                        "a string)")


def qualified_name_problem(key: str) -> str | None:
    """Why ``key`` is not a label key ([prefix/]name), or None."""
    prefix, _, name = key.rpartition("/")
    if "/" in key and (not prefix or dns_subdomain_problem(prefix)):
        return "prefix part must be a DNS-1123 subdomain"
    if not name or len(name) > 63 or not _QNAME_RE.fullmatch(name):
        return ("name part must be at most 63 characters: alphanumerics, '-', '_' or '.', "
                "starting and ending with an alphanumeric")
    return None


def label_value_problem(value: str) -> str | None:
    if value and (len(value) > 63 or not _QNAME_RE.fullmatch(value)):
        return ("must be at most 63 characters: alphanumerics, '-', '_' or '.', starting and "
                "ending with an alphanumeric (or empty)")
    return None


def parse_labels(value: object, path: str) -> dict[str, str]:
    """A labels map (metadata.labels, matchLabels, a namespace's labels)."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise _fail(path, f"must be an object, not {_kind(value)}")
    out: dict[str, str] = {}
    for k, v in value.items():
        key = _string(k, path)
        if problem := qualified_name_problem(key):
            raise _fail(f"{path}.{_key(key)}", f"invalid label key: {problem}")
        text = _string(v, f"{path}.{key}")
        if problem := label_value_problem(text):
            raise _fail(f"{path}.{key}", f"invalid label value {shown(text)}: {problem}")
        out[key] = text
    return out


def _annotations(value: object) -> None:
    """metadata.annotations: qualified-name keys, string values (kubectl's own
    last-applied-configuration is one)."""
    if value is None:
        return
    if not isinstance(value, dict):
        raise _fail("metadata.annotations", f"must be an object, not {_kind(value)}")
    for k, v in value.items():
        key = _string(k, "metadata.annotations")
        if problem := qualified_name_problem(key.lower()):  # as ValidateAnnotations
            raise _fail(f"metadata.annotations.{_key(key)}",
                        f"invalid annotation key: {problem}")
        _string(v, f"metadata.annotations.{_key(key)}")


def _requirement(value: object, path: str) -> Requirement:
    d = _mapping(value, path, ("key", "operator", "values"))
    key = _string(d.get("key"), f"{path}.key")
    if problem := qualified_name_problem(key):
        raise _fail(f"{path}.key", problem)
    op = _string(d.get("operator"), f"{path}.operator")
    values = [_string(v, f"{path}.values[{i}]")
              for i, v in enumerate(_list(d.get("values"), f"{path}.values"))]
    if op in (IN, NOT_IN) and not values:
        raise _fail(f"{path}.values", "must be specified when `operator` is 'In' or 'NotIn'")
    if op in (EXISTS, DOES_NOT_EXIST) and values:
        raise _fail(f"{path}.values",
                    "may not be specified when `operator` is 'Exists' or 'DoesNotExist'")
    if op not in (IN, NOT_IN, EXISTS, DOES_NOT_EXIST):
        raise _fail(f"{path}.operator", f"not a valid selector operator: {shown(op)}")
    for i, v in enumerate(values):
        if problem := label_value_problem(v):
            raise _fail(f"{path}.values[{i}]", problem)
    return Requirement(key, op, frozenset(values))


def parse_selector(value: object, path: str) -> LabelSelector:
    d = _mapping(value if value is not None else {}, path, ("matchLabels", "matchExpressions"))
    labels = parse_labels(d.get("matchLabels"), f"{path}.matchLabels")
    exprs = tuple(_requirement(e, f"{path}.matchExpressions[{i}]")
                  for i, e in enumerate(_list(d.get("matchExpressions"),
                                              f"{path}.matchExpressions")))
    return LabelSelector(tuple(sorted(labels.items())), exprs)


def _cidr(value: object, path: str) -> IPNetwork:
    text = _string(value, path)
    if not text:
        raise _fail(path, "Required value")
    # As the API server's: an address and a prefix length (a bare address is no CIDR),
    # and no IPv6 zone ("%eth0"), which names an interface of one host.
    if text.count("/") != 1 or "%" in text:
        raise _fail(path, f"must be a valid CIDR, not {shown(text)}")
    try:
        # The API server accepts host bits (10.0.0.1/8 is 10.0.0.0/8).
        return ip_network(text, strict=False)
    except ValueError:
        raise _fail(path, f"must be a valid CIDR, not {shown(text)}") from None


def _ip_block(value: object, path: str) -> IPBlock:
    d = _mapping(value, path, ("cidr", "except"))
    cidr = _cidr(d.get("cidr"), f"{path}.cidr")
    excepts = []
    for i, e in enumerate(_list(d.get("except"), f"{path}.except")):
        net = _cidr(e, f"{path}.except[{i}]")
        if (net.version != cidr.version or not net.subnet_of(cidr)  # type: ignore[arg-type]
                or net.prefixlen <= cidr.prefixlen):
            raise _fail(f"{path}.except[{i}]", "must be a strict subset of `cidr`")
        excepts.append(net)
    return IPBlock(cidr, tuple(excepts))


def _peer(value: object, path: str) -> Peer:
    d = _mapping(value, path, ("podSelector", "namespaceSelector", "ipBlock"))
    pods = parse_selector(d["podSelector"], f"{path}.podSelector") \
        if d.get("podSelector") is not None else None
    nss = parse_selector(d["namespaceSelector"], f"{path}.namespaceSelector") \
        if d.get("namespaceSelector") is not None else None
    block = _ip_block(d["ipBlock"], f"{path}.ipBlock") if d.get("ipBlock") is not None else None
    given = sum(x is not None for x in (pods, nss, block))
    if given == 0:
        raise _fail(path, "must specify a peer")
    if block is not None and given > 1:
        raise _fail(path, "may not specify both ipBlock and another peer")
    return Peer(pods, nss, block)


def port_name_problem(name: str) -> str | None:
    """Why ``name`` is not an IANA service name (a container port's name), or None."""
    if not 1 <= len(name) <= 15:
        return "must be no more than 15 characters"
    if not _PORT_NAME_RE.fullmatch(name):
        return "must contain only alpha-numeric characters (a-z, 0-9), and hyphens (-)"
    if "--" in name:
        return "must not contain consecutive hyphens"
    if not re.search("[a-z]", name):
        return "must contain at least one letter (a-z)"
    if name.startswith("-") or name.endswith("-"):
        return "must not begin or end with a hyphen"
    return None


def _port_number(value: object, path: str) -> int:
    n = _int(value, path)
    if not 1 <= n <= 65535:
        raise _fail(path, f"{n}: must be between 1 and 65535, inclusive")
    return n


def _port(value: object, path: str) -> PolicyPort:
    d = _mapping(value, path, ("protocol", "port", "endPort"))
    proto = d.get("protocol")
    proto = "TCP" if proto is None else _string(proto, f"{path}.protocol")
    if proto not in PROTOCOLS:
        raise _fail(f"{path}.protocol", f"Unsupported value: {shown(proto)}: supported values: "
                    '"TCP", "UDP", "SCTP"')
    port, end = d.get("port"), d.get("endPort")
    if port is None:
        if end is not None:
            raise _fail(f"{path}.endPort", "may not be specified when `port` is not specified")
        return PolicyPort(proto)
    if isinstance(port, str):
        if end is not None:
            raise _fail(f"{path}.endPort", "may not be specified when `port` is non-numeric")
        if problem := port_name_problem(port):
            raise _fail(f"{path}.port", f"{shown(port)}: {problem}")
        return PolicyPort(proto, port)
    number = _port_number(port, f"{path}.port")
    if end is None:
        return PolicyPort(proto, number)
    top = _port_number(end, f"{path}.endPort")
    if top < number:
        raise _fail(f"{path}.endPort", "must be greater than or equal to `port`")
    return PolicyPort(proto, number, top)


def _rule(value: object, path: str, peers_field: str) -> Rule:
    d = _mapping(value, path, (peers_field, "ports"))
    peers = tuple(_peer(p, f"{path}.{peers_field}[{i}]")
                  for i, p in enumerate(_list(d.get(peers_field), f"{path}.{peers_field}")))
    ports = tuple(_port(p, f"{path}.ports[{i}]")
                  for i, p in enumerate(_list(d.get("ports"), f"{path}.ports")))
    return Rule(peers or None, ports)


def _policy_types(value: object, has_egress: bool) -> frozenset[str]:
    given = [_string(t, f"spec.policyTypes[{i}]")
             for i, t in enumerate(_list(value, "spec.policyTypes"))]
    if len(given) > 2:
        raise _fail("spec.policyTypes", "may not specify more than two policyTypes")
    for i, t in enumerate(given):
        if t not in (INGRESS, EGRESS):
            raise _fail(f"spec.policyTypes[{i}]",
                        f'Unsupported value: {shown(t)}: supported values: "Ingress", "Egress"')
    if given:
        return frozenset(given)
    return frozenset({INGRESS, EGRESS} if has_egress else {INGRESS})


# -- the object ---------------------------------------------------------------------------

def parse_policy(obj: object, default_namespace: str = DEFAULT_NAMESPACE) -> NetworkPolicy:
    """One NetworkPolicy object (decoded JSON/YAML) -> the validated value."""
    d = _mapping(obj, "", ("apiVersion", "kind", "metadata", "spec"))
    if d.get("apiVersion") != API_VERSION:
        raise _fail("apiVersion", f"must be {API_VERSION!r}, not {shown(d.get('apiVersion'))}")
    if d.get("kind") != KIND:
        raise _fail("kind", f"must be {KIND!r}, not {shown(d.get('kind'))}")
    meta = _mapping(d.get("metadata"), "metadata", _META_FIELDS)
    name = meta.get("name")
    if name is None:
        raise _fail("metadata.name", "Required value: name is required")
    name = _string(name, "metadata.name")
    if problem := dns_subdomain_problem(name):
        raise _fail("metadata.name", f"{shown(name)} {problem}")
    ns = meta.get("namespace", default_namespace)
    if ns is not None and not isinstance(ns, str):
        raise _fail("metadata.namespace", f"must be a string, not {_kind(ns)}")
    if problem := dns_label_problem(ns):
        raise _fail("metadata.namespace", f"{shown(ns)} {problem}")
    assert isinstance(ns, str)  # dns_label_problem refuses anything else
    parse_labels(meta.get("labels"), "metadata.labels")
    _annotations(meta.get("annotations"))
    spec = _mapping(d.get("spec"), "spec", ("podSelector", "ingress", "egress", "policyTypes"))
    if "podSelector" not in spec:
        raise _fail("spec.podSelector", "Required value")
    selector = parse_selector(spec["podSelector"], "spec.podSelector")
    ingress = tuple(_rule(r, f"spec.ingress[{i}]", "from")
                    for i, r in enumerate(_list(spec.get("ingress"), "spec.ingress")))
    egress = tuple(_rule(r, f"spec.egress[{i}]", "to")
                   for i, r in enumerate(_list(spec.get("egress"), "spec.egress")))
    types = _policy_types(spec.get("policyTypes"), bool(egress))
    stored = {**d, "metadata": {**meta, "namespace": ns}}
    _check_json(stored, "")
    return NetworkPolicy(ns, name, selector, types,
                         ingress if INGRESS in types else (),
                         egress if EGRESS in types else (),
                         json.dumps(stored, sort_keys=True, separators=(",", ":")))


# -- manifests ------------------------------------------------------------------------------

@functools.cache
def _strict_loader() -> type[yaml.SafeLoader]:
    """SafeLoader that refuses a field name that is not a string or is given twice
    (kubectl's strict decoding refuses duplicates) and a document whose aliases repeat
    more than MAX_ALIAS_NODES nodes. Built on first use: only manifests (the CLI) need
    YAML, and PyYAML costs overlayd, which reads policies from etcd as JSON, about 1.7 MB
    of RSS."""
    import yaml

    class StrictLoader(yaml.SafeLoader):
        def compose_document(self) -> yaml.Node | None:
            node = super().compose_document()
            if node is not None and (_expanded_nodes(node) - _distinct_nodes(node)
                                     > MAX_ALIAS_NODES):
                raise yaml.composer.ComposerError(
                    None, None, f"excessive aliasing: its aliases repeat more than "
                    f"{MAX_ALIAS_NODES} nodes", None)
            return node

    def construct_mapping(loader: StrictLoader, node: yaml.MappingNode) -> dict[Any, Any]:
        loader.flatten_mapping(node)
        out: dict[str, Any] = {}
        for key_node, value_node in node.value:
            key = loader.construct_object(key_node, deep=True)
            if not isinstance(key, str):  # 1, true, null, a list...: quote the name
                text = (f"{shown(key_node.value)} " if isinstance(key_node, yaml.ScalarNode)
                        else "")
                raise yaml.constructor.ConstructorError(
                    None, None, f"field name {text}is a {_yaml_kind(key)}, not a string"
                    f"{' (quote it)' if text else ''}", key_node.start_mark)
            if key in out:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate field {shown(key)}", key_node.start_mark)
            out[key] = loader.construct_object(value_node, deep=True)
        return out

    StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG,
                                 construct_mapping)
    return StrictLoader


def _yaml_kind(value: object) -> str:
    return {bool: "boolean", int: "number", float: "number", type(None): "null", list: "list",
            dict: "mapping"}.get(type(value), type(value).__name__)


def _children(node: yaml.Node) -> list[yaml.Node]:
    import yaml

    if isinstance(node, yaml.MappingNode):
        return [n for pair in node.value for n in pair]
    return list(node.value) if isinstance(node, yaml.SequenceNode) else []


def _distinct_nodes(root: yaml.Node) -> int:
    seen, todo = {id(root)}, [root]
    while todo:
        for child in _children(todo.pop()):
            if id(child) not in seen:
                seen.add(id(child))
                todo.append(child)
    return len(seen)


def _expanded_nodes(root: yaml.Node) -> int:
    """How many nodes the document has once every alias is replaced by a copy of what it
    names: each node's count is worked out once (aliases share the node), without
    recursion (the depth is the input's). Stops counting past MAX_ALIAS_NODES's reach; a
    node that contains itself counts once there (the constructor refuses it anyway)."""
    sizes: dict[int, int] = {}
    visiting: set[int] = set()
    todo: list[tuple[yaml.Node, bool]] = [(root, False)]
    cap = 2 * MAX_ALIAS_NODES + 1
    while todo:
        node, children_done = todo.pop()
        key = id(node)
        if children_done:
            visiting.discard(key)
            sizes[key] = min(cap, 1 + sum(sizes.get(id(c), 0) for c in _children(node)))
            continue
        if key in sizes or key in visiting:
            continue
        visiting.add(key)
        todo.append((node, True))
        todo.extend((c, False) for c in _children(node) if id(c) not in sizes)
    return sizes[id(root)]


def _documents(text: str) -> list[object]:
    import yaml

    try:
        return [d for d in yaml.load_all(text, Loader=_strict_loader()) if d is not None]
    except RecursionError:  # PyYAML composes and constructs recursively
        raise PolicyError("not valid YAML or JSON: nested too deeply") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        what = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise PolicyError(f"not valid YAML or JSON{where}: {what}") from None


def _objects(docs: list[object]) -> Iterator[tuple[str, object]]:
    """(where, object) for every object, a List's items flattened."""
    for n, doc in enumerate(docs):
        where = f"document {n + 1}" if len(docs) > 1 else ""
        if isinstance(doc, dict) and doc.get("kind") in ("List", "NetworkPolicyList"):
            items = _list(doc.get("items"), f"{where} items".strip())
            for i, item in enumerate(items):
                yield f"{where} items[{i}]".strip(), item
        else:
            yield where, doc


def load_manifests(text: str, default_namespace: str = DEFAULT_NAMESPACE
                   ) -> list[NetworkPolicy]:
    """Every NetworkPolicy in a manifest (JSON, YAML, multi-document YAML, a ``List``);
    the first invalid one fails the whole manifest (nothing is applied)."""
    if len(text.encode("utf-8", "surrogateescape")) > MAX_MANIFEST_BYTES:
        raise PolicyError(f"the manifest is larger than {MAX_MANIFEST_BYTES} bytes")
    out: list[NetworkPolicy] = []
    seen: set[str] = set()
    for where, obj in _objects(_documents(text)):
        try:
            policy = parse_policy(obj, default_namespace)
        except PolicyError as e:
            raise PolicyError(f"{where}: {e}" if where else str(e)) from None
        if policy.ref in seen:
            raise PolicyError(f"{where}: {policy.ref} is given twice in the manifest")
        seen.add(policy.ref)
        out.append(policy)
    if not out:
        raise PolicyError("the manifest holds no NetworkPolicy")
    return out
