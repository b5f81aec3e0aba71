"""The one decoder of untrusted JSON: every bad text is a ValueError, deep nesting too."""

import json

import pytest

from overlay.util import jsontext

DEEP = [b"[" * 100_000, b"[" * 5_000 + b"]" * 5_000, b'{"a":' * 5_000 + b"1" + b"}" * 5_000]


@pytest.mark.parametrize("text", DEEP, ids=["100000 [", "5000 [] closed", "5000 {} closed"])
def test_deep_nesting_is_a_value_error(text):
    with pytest.raises(jsontext.NestedTooDeeply, match="nested too deeply") as e:
        jsontext.loads(text)
    assert isinstance(e.value, ValueError)
    with pytest.raises(RecursionError):  # what the readers were exposed to
        json.loads(text)


@pytest.mark.parametrize("text", [b"\xff", b"{", b"", "[1,]"])
def test_other_bad_text_stays_a_value_error(text):
    with pytest.raises(ValueError):
        jsontext.loads(text)


def test_documents_and_keyword_arguments_pass_through():
    assert jsontext.loads(b'{"a": [1, 2.5]}') == {"a": [1, 2.5]}
    assert jsontext.loads("[1]", parse_int=str) == ["1"]


def test_every_reader_of_outside_json_rejects_deep_nesting(tmp_path):
    """Each reader turns the deep value into its own kind of rejection, none raises
    RecursionError (they all decode through jsontext)."""
    from overlay.cluster.nodes import decode_node
    from overlay.cluster.schema import parse_schema
    from overlay.cni.attachments import _read_json_file
    from overlay.cni.conflist import ConfListError, load_conflist
    from overlay.daemon.nodestatus import holder_of
    from overlay.errors import ConfigError
    from overlay.runtimefile import parse_runtime

    deep = DEEP[2]
    assert parse_schema(deep) is None
    assert holder_of(deep, None, "node1") is None
    with pytest.raises(ValueError, match="not a JSON document"):
        decode_node("node1", deep)
    with pytest.raises(ConfigError, match="nested too deeply"):
        parse_runtime(deep)
    path = tmp_path / "10-overlay.conflist"
    path.write_bytes(deep)
    with pytest.raises(ConfListError, match="nested too deeply"):
        load_conflist(str(path))
    assert _read_json_file(str(path))[0] is None
