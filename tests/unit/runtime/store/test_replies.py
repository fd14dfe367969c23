"""Redis replies narrowed to what Convoy's clients receive: a reply of another shape is refused."""

from __future__ import annotations

import pytest

from runtime.store import replies
from runtime.stream.items import entry_item, kind_of


def test_strings_and_hashes_read_as_text() -> None:
    assert replies.text(b"conv-1") == replies.text("conv-1") == "conv-1"
    assert replies.fields({b"status": b"running", b"owner": b"host-0"}) == {"status": "running", "owner": "host-0"}


def test_set_get_answers_the_previous_value() -> None:
    assert replies.previous(None) is None
    assert replies.previous(b"{}") == b"{}"
    with pytest.raises(TypeError, match="previous value"):
        replies.previous(True)  # what SET answers without GET


def test_a_range_is_read_as_it_was_asked_for() -> None:
    assert replies.members([b"run-1", b"run-2"]) == ["run-1", "run-2"]
    assert replies.scored([(b"run-1", 1700.0)]) == [("run-1", 1700.0)]
    with pytest.raises(TypeError, match="with scores"):
        replies.members([(b"run-1", 1700.0)])
    with pytest.raises(TypeError, match="without scores"):
        replies.scored([b"run-1"])


def test_stream_entries_must_be_undecoded() -> None:
    assert replies.entries(None) == []
    assert replies.entries([(b"0-1", {b"k": b"data", b"p": b"{}"})]) == [(b"0-1", {b"k": b"data", b"p": b"{}"})]
    with pytest.raises(TypeError, match="undecoded stream entry"):
        replies.entries([("0-1", {"k": "data"})])
    with pytest.raises(TypeError, match="undecoded stream entry"):
        replies.entries([(None, None)])  # what redis-py reports for an entry deleted under XAUTOCLAIM


def test_xread_is_a_list_of_streams() -> None:
    assert replies.streams(None) == []
    assert replies.streams([[b"bell", [(b"1-0", {b"c": b"conv-1"})]]]) == [(b"bell", [(b"1-0", {b"c": b"conv-1"})])]
    with pytest.raises(TypeError, match="RESP3"):
        replies.streams({b"bell": [[(b"1-0", {b"c": b"conv-1"})]]})


def test_an_item_kind_is_one_of_the_three() -> None:
    assert [kind_of(k) for k in (b"data", b"error", b"done")] == ["data", "error", "done"]
    assert entry_item(b"0-7", {b"p": b"{}"}).kind == "data"  # an entry without a kind is data
    with pytest.raises(ValueError, match="kind"):
        kind_of(b"DONE")
