"""Structural validation: pydantic errors turned into CLB error codes with document paths.

pydantic reports every field error of a document at once. To also report cross-object errors in
the same run, the broken list elements (a target, a rule, a listener) are left out and the rest
is validated again; the semantic checks then run on what is left, with paths kept from the
original document.
"""

from __future__ import annotations

from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from clbagent.errors import Code, Issue
from clbagent.model.base import annotate_paths
from clbagent.settings import Settings

_CODES = {
    "missing": Code.MISSING_PARAMETER,
    "extra_forbidden": Code.UNKNOWN_PARAMETER,
    "greater_than": Code.RANGE,
    "greater_than_equal": Code.RANGE,
    "less_than": Code.RANGE,
    "less_than_equal": Code.RANGE,
    "string_too_short": Code.LENGTH,
    "string_too_long": Code.LENGTH,
    "too_short": Code.MISSING_PARAMETER,
    "too_long": Code.LIMIT_EXCEEDED,
    "literal_error": Code.INVALID_VALUE,
    "enum": Code.INVALID_VALUE,
    "string_pattern_mismatch": Code.FORMAT_ERROR,
}
_CLB_CODES = {c.value for c in Code}
SECRET_FIELDS = {"CertKey", "SignCertPrivateKey", "certKey"}  # never quoted back, whatever their shape
_MAX_PASSES = 4
M = TypeVar("M", bound=BaseModel)


def _walk(raw: Any, loc: tuple[Any, ...]) -> list[str | int]:
    """The part of a pydantic location that addresses the raw document (union tags dropped)."""
    out: list[str | int] = []
    node = raw
    for i, part in enumerate(loc):
        if (isinstance(node, dict) and part in node) or (
            isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node)
        ):
            out.append(part)
            node = node[part]
        elif isinstance(node, dict) and isinstance(part, str) and part[:1].isupper():
            # a field the raw document does not spell this way (missing, or moved from a V2
            # spelling): name it and the fields below it
            out.extend(p for p in loc[i:] if isinstance(p, str) and p[:1].isupper())
            break
    return out


def render_path(root: str, steps: list[str | int]) -> str:
    path = root
    for step in steps:
        path = f"{path}[{step}]" if isinstance(step, int) else f"{path}/{step}"
    return path


def _code(err: dict[str, Any]) -> str:
    kind = err["type"]
    if kind in _CLB_CODES:
        return kind
    if kind in _CODES:
        return _CODES[kind].value
    if kind.startswith(("ip_", "int_", "bool_", "string_", "dict_", "list_", "model_", "float_", "json_")):
        return Code.FORMAT_ERROR.value
    return Code.INVALID_VALUE.value


def _message(err: dict[str, Any], secret: bool = False) -> str:
    secret = secret or "-----BEGIN" in repr(err.get("input"))  # PEM pasted into any field
    if err["type"] == "missing":
        return "this field is required"
    if err["type"] == "extra_forbidden":
        return "unknown field (field names follow the CLB API 2018-03-17 spelling)"
    if err["type"] in ("ip_v4_address", "ip_v6_address", "ip_any_address"):
        return (
            "the value is not a valid IP address" if secret else f"{err.get('input')!r:.60} is not a valid IP address"
        )
    if err["type"] in ("ip_v4_network", "ip_v6_network", "ip_any_network"):
        return (
            "the value is not a valid CIDR block" if secret else f"{err.get('input')!r:.60} is not a valid CIDR block"
        )
    msg = str(err["msg"])
    if err["type"] in _CLB_CODES:
        return msg
    if secret:
        return f"{msg[0].lower()}{msg[1:]} (the value is not shown: it may be key material)"
    shown = repr(err.get("input"))
    if len(shown) > 60:
        shown = shown[:57] + "..."
    return f"{msg[0].lower()}{msg[1:]} (got {shown})"


def pydantic_issues(exc: ValidationError, raw: Any, root: str) -> tuple[list[Issue], list[list[str | int]]]:
    """CLB issues for a pydantic error, and the raw locations of each error."""
    issues: dict[tuple[str, str], Issue] = {}
    locs: list[list[str | int]] = []
    for err in exc.errors(include_url=False):
        steps = _walk(raw, tuple(err["loc"]))
        code = _code(err)
        path = render_path(root, steps)
        secret = any(step in SECRET_FIELDS for step in err["loc"])
        issues.setdefault((path, code), Issue(path, code, _message(err, secret)))
        locs.append(steps)
    return list(issues.values()), locs


def _prune(raw: Any, locs: list[list[str | int]]) -> tuple[Any, list[list[str | int]]] | None:
    """Remove the innermost list element holding each error; an error outside any list drops
    the offending top-level key so its default applies. None when nothing can be removed."""
    cuts: dict[tuple[str | int, ...], set[int]] = {}
    keys: list[str | int] = []
    for steps in locs:
        idx = max((i for i, s in enumerate(steps) if isinstance(s, int)), default=None)
        if idx is None:
            if len(steps) != 1 or steps[0] not in raw:
                return None
            keys.append(steps[0])
            continue
        cuts.setdefault(tuple(steps[:idx]), set()).add(int(steps[idx]))  # type: ignore[arg-type]
    cut_elems = {(*p, i) for p, drop in cuts.items() for i in drop}
    cuts = {  # an element inside another removed element goes with it
        p: drop for p, drop in cuts.items() if not any(p[: len(e)] == e for e in cut_elems if len(e) <= len(p))
    }
    for key in keys:
        raw.pop(key, None)
    for parent, drop in sorted(cuts.items(), key=lambda kv: -len(kv[0])):
        node = raw
        for step in parent:
            node = node[step]
        node[:] = [v for i, v in enumerate(node) if i not in drop]
    return raw, [[*p, i] for p, drop in cuts.items() for i in drop] + [[k] for k in keys]


def validate_structure(
    model: type[M], raw: Any, root: str, settings: Settings
) -> tuple[M | None, list[Issue], list[str]]:
    """Validate ``raw`` as ``model``. Returns the model of the valid part (None if even that fails),
    the structural issues, and the paths of elements that were left out."""
    data = annotate_paths(raw)
    issues: list[Issue] = []
    pruned: list[str] = []
    for _ in range(_MAX_PASSES):
        try:
            return model.model_validate(data, context={"settings": settings}), issues, pruned
        except ValidationError as exc:
            found, locs = pydantic_issues(exc, data, root)
            issues.extend(i for i in found if i not in issues)
            cut = _prune(data, locs)
            if cut is None:
                return None, issues, pruned
            data, removed = cut
            pruned.extend(render_path(root, steps) for steps in removed)
    return None, issues, pruned
