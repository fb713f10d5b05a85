"""The regex judge: PCRE2 with nginx's compile options, the documented subset, a bounded cost;
and no input makes it fail other than with a refusal."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from clbagent.model.regex import SUBJECT_LENGTH, RegexError, adversarial_subjects, check_regex
from clbagent.model.syntax import parse_domain, parse_url

ACCEPTED = [
    "^www\\d+\\.example\\.com$",
    "\\.(gif|jpg|bmp)$",
    "^([a-z0-9-]+\\.)*example\\.com$",
    "^/api/.*\\.php$",
    "^/a/.*/b/.*$",
    "(?i)^/img/",
    "^/(?:v1|v2)/[^/]+$",
    "^/x(?>a+)b$",
    "^/a++b$",
    "^/a*?b$",
    "^\\x41\\t",
]


@pytest.mark.parametrize("pattern", ACCEPTED)
def test_the_documented_subset_is_accepted(pattern: str) -> None:
    check_regex(pattern, False)
    check_regex(pattern, True)


def test_domains_are_judged_caselessly_and_urls_by_their_modifier() -> None:
    assert parse_domain("~^(www|api)\\.a\\.test$").kind == "regex"
    assert parse_url("~*\\.PNG$").kind == "regex_nocase"
    with pytest.raises(Exception, match="named captures"):
        parse_url("~^/(?<host>x)$")


def test_adversarial_subjects_fill_the_header_size() -> None:
    import re._parser as sre_parse

    subjects = adversarial_subjects(list(sre_parse.parse(b"^(ab|cd)+$")))
    assert subjects and all(len(s) == SUBJECT_LENGTH for s in subjects)


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet="ab.\\d(|)?*+[]^$-:?<>P=!&'wsik", min_size=1, max_size=24))
def test_any_pattern_is_accepted_or_refused_never_an_exception(pattern: str) -> None:
    try:
        check_regex(pattern, False)
    except RegexError as exc:
        assert str(exc)
