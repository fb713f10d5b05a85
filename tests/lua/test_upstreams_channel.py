"""The agent's side of the channel without nginx: the data file, the dict size, the comparison.
(tests/lua/test_dynamic_upstreams.py drives the same client against the real nginx.)"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from clbagent.nginx.upstreams_channel import (
    Held,
    Member,
    Sticky,
    Upstream,
    channel_server,
    differences,
    http_directives,
    render_data_file,
    shared_dict_size,
    upstream_block,
)

A = Upstream((Member("10.0.0.1:80", 10), Member("[2001:db8::1]:80", 0, down=True)))
B = Upstream((Member("10.0.0.2:80", 5, sid="s2"),), "least_conn", Sticky("clb_x", 60))


def test_data_file_is_byte_deterministic_and_round_trips() -> None:
    text = render_data_file({"b": B, "a": A})
    assert text == render_data_file({"a": A, "b": B})
    doc = json.loads(text)
    assert list(doc["upstreams"]) == ["a", "b"]
    assert {n: Upstream.from_json(u) for n, u in doc["upstreams"].items()} == {"a": A, "b": B}


def test_empty_members_read_back_from_either_json_form() -> None:
    assert Upstream.from_json({"method": "wrr", "members": {}}) == Upstream(())
    assert Upstream.from_json({"method": "wrr", "members": []}) == Upstream(())


def test_dict_size_is_a_power_of_two_that_grows_with_the_state() -> None:
    assert shared_dict_size({}) == "4m"
    member = Member("10.0.0.1:8080", 100)
    big = {f"u{i}": Upstream((member,) * 1000) for i in range(100)}
    size = int(shared_dict_size(big)[:-1])
    assert size >= 4 * len(render_data_file(big)) / 2**20
    assert size & (size - 1) == 0


def test_differences_name_each_upstream_held_otherwise() -> None:
    held = Held("i1", {"a": A, "b": Upstream(B.members, "wrr", B.sticky)})
    assert differences({"a": A}, held) == []
    found = differences({"a": A, "b": B, "c": A}, held)
    assert [f.split(":")[0] for f in found] == ["upstream b", "upstream c"]
    assert "holds nothing" in found[1]


def test_nginx_text_refuses_what_it_cannot_write_safely() -> None:
    with pytest.raises(ValueError):
        upstream_block('u"; os.execute("x')
    with pytest.raises(ValueError):
        http_directives(Path('/srv/clb"); os.execute("x'), "4m")
    with pytest.raises(ValueError):
        http_directives(Path("/srv/clb"), "4m; x")
    with pytest.raises(ValueError):
        channel_server(Path("relative/prefix"))
    with pytest.raises(ValueError):
        upstream_block("u\n")
    assert 'balance("u_1.a-b")' in upstream_block("u_1.a-b")
