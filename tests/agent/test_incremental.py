"""Incremental validation gives the verdicts a full validation gives, while validating only the
documents a change concerns."""

from __future__ import annotations

import copy
import random

import pytest

from clbagent.agent.incremental import IncrementalValidator
from clbagent.settings import Settings
from clbagent.validate import validate_documents
from tests.agent.conftest import http_lb


def _verdicts(state) -> dict[str, tuple[bool, frozenset]]:
    return {d.source: (d.ok, frozenset((i.path, i.code) for i in d.issues)) for d in state.documents}


def _doc(i: int, vip: int, port: int = 8080, lb: str | None = None) -> dict:
    return http_lb(lb or f"lb-{i}", f"127.0.50.{vip}", [{"EniIp": "10.0.0.1", "Port": 80, "Weight": 10}], port=port)


def test_a_one_document_edit_validates_only_that_document():
    docs = [(f"d{i}", _doc(i, i + 1)) for i in range(50)]
    v = IncrementalValidator(Settings())
    v.validate(docs)
    assert v.last_validated == 50
    docs[10] = ("d10", _doc(10, 11, port=8081))
    state = v.validate(docs)
    assert v.last_validated == 1
    assert _verdicts(state) == _verdicts(validate_documents(docs))
    assert v.validate(docs) is state  # nothing changed: nothing validated


def test_cross_document_rules_see_every_party():
    docs = [(f"d{i}", _doc(i, i + 1)) for i in range(10)]
    v = IncrementalValidator(Settings())
    v.validate(docs)
    docs[3] = ("d3", _doc(3, 5))  # now on lb-4's VIP and port: both are in conflict
    state = v.validate(docs)
    assert _verdicts(state) == _verdicts(validate_documents(docs))
    assert not {d.source: d.ok for d in state.documents}["d4"] or not {d.source: d.ok for d in state.documents}["d3"]
    docs[7] = ("d7", _doc(7, 8, lb="lb-2"))  # a second lb-2
    state = v.validate(docs)
    assert _verdicts(state) == _verdicts(validate_documents(docs))
    del docs[3]  # the VIP is free again: lb-4 is valid again
    state = v.validate(docs)
    assert _verdicts(state) == _verdicts(validate_documents(docs))


def test_shared_objects_changing_validate_everything(tmp_path):
    acl = {"Acls": [{"AclId": "acl-1", "AddressIPVersion": "ipv4", "AclEntrys": [{"Entry": "10.0.0.0/8"}]}]}
    docs = [("shared", acl)] + [(f"d{i}", _doc(i, i + 1)) for i in range(5)]
    v = IncrementalValidator(Settings())
    v.validate(docs)
    docs[0] = ("shared", {"Acls": []})
    v.validate(docs)
    assert v.last_validated == 6


@pytest.mark.parametrize("seed", [7, 11, 23])
def test_random_edit_sequences_agree_with_full_validation(seed):
    rng = random.Random(seed)
    docs = [(f"d{i}", _doc(i, rng.randint(1, 8), port=rng.choice((8080, 8081)))) for i in range(12)]
    v = IncrementalValidator(Settings())
    for _ in range(60):
        i = rng.randrange(len(docs))
        action = rng.random()
        if action < 0.15 and len(docs) > 3:
            del docs[i]
        elif action < 0.3:
            docs.append((f"n{rng.randrange(10**6)}", _doc(rng.randrange(20), rng.randint(1, 8))))
        else:
            raw = copy.deepcopy(docs[i][1])
            raw["LoadBalancerVips"] = [f"127.0.50.{rng.randint(1, 8)}"]
            if rng.random() < 0.2:
                raw["Listeners"][0]["Port"] = 70000  # invalid
            if rng.random() < 0.2:
                raw["LoadBalancerId"] = f"lb-{rng.randrange(4)}"
            docs[i] = (docs[i][0], raw)
        assert _verdicts(v.validate(docs)) == _verdicts(validate_documents(docs))
