"""The schema record against a real etcd: created, raised, and a newer one respected."""

import json

import pytest

from overlay.cluster.keys import schema_key
from overlay.cluster.schema import SCHEMA_VERSION, ensure_schema, parse_schema, read_schema

pytestmark = pytest.mark.integration



def test_absent_is_created_and_then_read(store):
    assert not read_schema(store).writable
    status = ensure_schema(store)
    assert status.writable and status.found == SCHEMA_VERSION
    assert parse_schema(store.get(schema_key(store.prefix)).value) == SCHEMA_VERSION
    assert ensure_schema(store).writable and read_schema(store).writable


def test_newer_version_is_left_alone_and_not_writable(store):
    key = schema_key(store.prefix)
    store.put(key, json.dumps({"version": SCHEMA_VERSION + 1}).encode())
    status = ensure_schema(store)
    assert not status.writable and "newer" in status.describe()
    assert parse_schema(store.get(key).value) == SCHEMA_VERSION + 1


@pytest.mark.parametrize("raw", [b"garbage", b'{"version": "2"}', b'{"version": true}',
                                 b'{"version": 0}', b"[]"])
def test_unreadable_record_is_not_overwritten(store, raw):
    key = schema_key(store.prefix)
    store.put(key, raw)
    assert not ensure_schema(store).writable
    assert store.get(key).value == raw
