"""Base class of every model object: strict field set, V2 aliases, and the path it came from.

The path is what error messages print (``lb-1/Listeners[2]/Port``). It is attached to the raw
document before validation (key ``__path__``) and kept on the object as an ordinary field
(``doc_path_``, left out of dumps and of the schema), so that cross-object checks report the
original position even when other, broken, objects were left out. An ordinary field is filled by
pydantic's own validator: no Python runs per object for it (a document holds thousands).
"""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic.json_schema import SkipJsonSchema

PATH_KEY = "__path__"


class Obj(BaseModel):
    """A document object. ``V2_KEYS`` maps V2 API spellings to the V3 field alias; ``OUTPUT_ONLY``
    names the fields the product's Describe* output adds (times, states, billing, names of
    things the data plane does not use), accepted and dropped so that a control plane can pass
    its objects over unchanged.

    A document that spells ``doc_path_`` itself is refused as an unknown field: every mapping
    carries ``__path__``, which takes the field."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True, validate_default=False)

    V2_KEYS: ClassVar[dict[str, str]] = {}
    OUTPUT_ONLY: ClassVar[frozenset[str]] = frozenset()
    doc_path_: SkipJsonSchema[str] = Field("", alias=PATH_KEY, exclude=True, repr=False)

    @model_validator(mode="before")
    @classmethod
    def _v2_keys(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        keys, dropped = cls.V2_KEYS, cls.OUTPUT_ONLY
        if dropped and not dropped.isdisjoint(data):
            data = {k: v for k, v in data.items() if k not in dropped}
        if keys and not keys.keys().isdisjoint(data):
            data = dict(data)
            for old, new in keys.items():
                if old in data and new not in data:
                    data[new] = data.pop(old)
        return data

    @property
    def path(self) -> str:
        return self.doc_path_

    def at(self, field: str) -> str:
        """Path of one field of this object."""
        path = self.doc_path_
        return f"{path}/{field}" if path else field


def annotate_paths(data: Any, path: str = "") -> Any:
    """Copy of a raw document where every mapping carries its own path under ``__path__``."""
    kind = type(data)
    if kind is dict or isinstance(data, dict):
        prefix = f"{path}/" if path else ""
        out = {k: annotate_paths(v, f"{prefix}{k}") for k, v in data.items() if k != PATH_KEY}
        out[PATH_KEY] = path
        return out
    if kind is list or isinstance(data, list):
        return [annotate_paths(v, f"{path}[{i}]") for i, v in enumerate(data)]
    return data


def strip_paths(data: Any) -> Any:
    """Inverse of :func:`annotate_paths`."""
    if isinstance(data, dict):
        return {k: strip_paths(v) for k, v in data.items() if k != PATH_KEY}
    if isinstance(data, list):
        return [strip_paths(v) for v in data]
    return data
