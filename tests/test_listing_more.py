"""Listings made whole (Listing.of, Listing.refusal) and the cap on warnings of a hostile listing (no FUSE)."""

from __future__ import annotations

import json
import logging
import sys

from desfs.listing import Entry, Listing, entry_bytes, parse_listing


def test_a_listing_of_entries_keeps_the_first_of_each_name_its_ttl_and_what_it_holds():
    a, again, b = Entry("a", False, 10, 1.0), Entry("a", True, 0, 2.0), Entry("b", False, 10**12, 3.0)
    listing = Listing.of([a, again, b], ttl=5.0)
    assert list(listing) == ["a", "b"] and listing["a"] is a and listing["b"] is b
    assert listing.ttl == 5.0 and listing.refused is None and Listing.of([]).ttl is None
    assert listing.nbytes >= sys.getsizeof(Listing()) + entry_bytes(a) + entry_bytes(b)
    assert listing.nbytes < 2 * (sys.getsizeof(Listing()) + entry_bytes(a) + entry_bytes(b))


def test_a_refused_listing_is_empty_and_holds_its_reason():
    why = "folder listing larger than the budget " + "x" * 1000
    listing = Listing.refusal(why, ttl=3.0)
    assert listing == {} and listing.refused == why and listing.ttl == 3.0
    held = sys.getsizeof(Listing()) + sys.getsizeof(why)  # the empty dict and its reason
    assert held <= listing.nbytes < held + 64


def test_a_hostile_listing_logs_its_first_fifty_bad_items_then_how_many_more(caplog):
    body = json.dumps([{"name": "..", "type": "directory"}] * 57 + [{"name": "ok", "type": "file", "size": 1}])
    with caplog.at_level(logging.WARNING):
        entries = parse_listing(body.encode(), "http://h/j/")
    assert [e.name for e in entries] == ["ok"]
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 51 and messages[-1] == "listing http://h/j/: 7 more items skipped"


def test_a_whole_listing_past_its_budget_is_too_large():
    import pytest

    from desfs.errors import TooLarge

    body = json.dumps([{"name": f"f{i}", "type": "file", "size": i} for i in range(100)]).encode()
    assert len(parse_listing(body, "http://h/j/")) == 100
    with pytest.raises(TooLarge):
        parse_listing(body, "http://h/j/", max_bytes=2000)
