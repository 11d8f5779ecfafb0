"""The listing parser on its own: nginx's shape, and hostile or broken listings."""

import json

import pytest

from desfs.errors import BadListing
from desfs.listing import Entry, parse_listing

NGINX_SAMPLE = b"""[
{ "name":"DES0226-1541", "type":"directory", "mtime":"Mon, 06 Jul 2020 15:21:33 GMT" },
{ "name":"summary.json", "type":"file", "mtime":"Mon, 06 Jul 2020 15:21:35 GMT", "size":4182 }
]
"""


def test_nginx_shape():
    entries = parse_listing(NGINX_SAMPLE)
    assert entries == [
        Entry("DES0226-1541", True, 0, 1594048893.0),
        Entry("summary.json", False, 4182, 1594048895.0),
    ]


def test_escaped_and_unicode_names():
    body = json.dumps([{"name": 'a "quoted" \\ name', "type": "file", "size": 1, "mtime": "x"},
                       {"name": "ünï ✓ #?%+", "type": "file", "size": 2}]).encode()
    names = [e.name for e in parse_listing(body)]
    assert names == ['a "quoted" \\ name', "ünï ✓ #?%+"]


@pytest.mark.parametrize("name", ["", ".", "..", "a/b", "/", "a\0b", "x" * 256, "é" * 128, 5, None])
def test_hostile_names_are_refused(name, caplog):
    body = json.dumps([{"name": name, "type": "file", "size": 1}, {"name": "ok", "type": "file", "size": 1}])
    assert [e.name for e in parse_listing(body.encode())] == ["ok"]
    assert "refused" in caplog.text


def test_longest_allowed_name():
    assert parse_listing(json.dumps([{"name": "x" * 255, "type": "file", "size": 0}]).encode())[0].name == "x" * 255


def test_duplicates_other_and_bad_items_are_skipped(caplog):
    body = json.dumps([
        {"name": "a", "type": "file", "size": 1},
        {"name": "a", "type": "directory"},
        {"name": "sock", "type": "other"},
        {"name": "weird", "type": "symlink"},
        {"name": "neg", "type": "file", "size": -1},
        {"name": "str", "type": "file", "size": "12"},
        ["not", "an", "object"],
    ]).encode()
    assert parse_listing(body) == [Entry("a", False, 1, 0.0)]
    assert "duplicate" in caplog.text


@pytest.mark.parametrize("body", [b"<html>Index of /</html>", b"", b"{\"name\": 1}", b"[", b"\xff\xfe", b"null"])
def test_not_a_listing(body):
    with pytest.raises(BadListing) as info:
        parse_listing(body, "http://h/x/json")
    assert info.value.errno == 5  # EIO


def test_enormous_listing():
    items = [{"name": f"f{i:06d}.fits", "type": "file", "size": i, "mtime": "Mon, 06 Jul 2020 15:21:33 GMT"}
             for i in range(100_000)]
    entries = parse_listing(json.dumps(items).encode())
    assert len(entries) == 100_000 and entries[-1].size == 99_999


def test_missing_size_on_file_is_zero_and_folders_ignore_size():
    body = b'[{"name":"d","type":"directory","size":99},{"name":"f","type":"file"}]'
    assert parse_listing(body) == [Entry("d", True, 0, 0.0), Entry("f", False, 0, 0.0)]


def test_errors_say_what_is_wrong_and_name_the_listing():
    url = "http://h/x/json"
    body = b"<html><head><title>Index of /x/</title></head><body>" + b"x" * 100
    with pytest.raises(BadListing) as info:
        parse_listing(body, url)
    assert str(info.value) == f"folder listing is not valid JSON ({body[:40]!r}): {url}"
    assert info.value.url == url
    with pytest.raises(BadListing) as info:
        parse_listing(b'{"name": "a"}', url)
    assert str(info.value) == f"folder listing is not a JSON array (b'{{\"name\": \"a\"}}'): {url}"
    assert info.value.url == url
    with pytest.raises(BadListing) as info:
        parse_listing(b"7")  # no URL given: the message alone
    assert str(info.value) == "folder listing is not a JSON array (b'7')" and not info.value.url


def test_every_skipped_item_is_logged_with_the_listing_and_the_reason(caplog):
    url = "http://h/x/json"
    body = json.dumps([
        ["not", "an", "object"],
        {"name": 5, "type": "file", "size": 1},
        {"name": "..", "type": "file", "size": 1},
        {"name": "a/b", "type": "file", "size": 1},
        {"name": "x" * 256, "type": "file", "size": 1},
        {"name": "weird", "type": "symlink"},
        {"name": "neg", "type": "file", "size": -1},
        {"name": "ok", "type": "file", "size": 1},
        {"name": "ok", "type": "directory"},
        {"name": "sock", "type": "other"},  # left out without a word: nothing a reader could open
        {"name": "last", "type": "file", "size": 2},
    ]).encode()
    caplog.set_level("WARNING", logger="desfs.listing")
    assert [e.name for e in parse_listing(body, url)] == ["ok", "last"]
    assert [r.getMessage() for r in caplog.records] == [
        f"listing {url}: item that is not an object skipped: ['not', 'an', 'object']",
        f"listing {url}: name 5 refused: not a string",
        f"listing {url}: name '..' refused: reserved name",
        f"listing {url}: name 'a/b' refused: holds '/' or NUL",
        f"listing {url}: name {'x' * 256!r:.80} refused: longer than 255 bytes",
        f"listing {url}: 'weird' has unknown type 'symlink', skipped",
        f"listing {url}: 'neg' has a bad size -1, skipped",
        f"listing {url}: duplicate name 'ok' skipped",
    ]


def test_a_name_that_is_not_utf8_is_refused_alone(caplog):
    body = b'[{"name":"bad\xff.fits","type":"file","size":1},{"name":"good.fits","type":"file","size":2}]'
    assert parse_listing(body, "u") == [Entry("good.fits", False, 2, 0.0)]
    assert "refused: not valid UTF-8" in caplog.text
