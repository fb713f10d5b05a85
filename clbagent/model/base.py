"""Base class of every model object: strict field set, V2 aliases, and the path it came from.

The path is what error messages print (``lb-1/Listeners[2]/Port``). It is attached to the raw
document before validation (key ``__path__``) and kept on the object, so that cross-object checks
report the original position even when other, broken, objects were left out.
"""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, PrivateAttr, model_validator

PATH_KEY = "__path__"


class Obj(BaseModel):
    """A document object. ``V2_KEYS`` maps V2 API spellings to the V3 field alias."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True, validate_default=False)

    V2_KEYS: ClassVar[dict[str, str]] = {}
    _doc_path: str = PrivateAttr(default="")

    @model_validator(mode="wrap")
    @classmethod
    def _track_path(cls, data: Any, handler: Any) -> Any:
        path = None
        if isinstance(data, dict):
            data = dict(data)
            path = data.pop(PATH_KEY, None)
            if cls.V2_KEYS and not cls.V2_KEYS.keys().isdisjoint(data):
                for old, new in cls.V2_KEYS.items():
                    if old in data and new not in data:
                        data[new] = data.pop(old)
        obj = handler(data)
        if isinstance(path, str):
            obj.__pydantic_private__["_doc_path"] = path  # pydantic's own slot, without its __setattr__
        return obj

    @property
    def path(self) -> str:
        return self.__pydantic_private__["_doc_path"]

    def at(self, field: str) -> str:
        """Path of one field of this object."""
        path = self.__pydantic_private__["_doc_path"]
        return f"{path}/{field}" if path else field


def annotate_paths(data: Any, path: str = "") -> Any:
    """Copy of a raw document where every mapping carries its own path under ``__path__``."""
    if isinstance(data, dict):
        out = {k: annotate_paths(v, f"{path}/{k}" if path else str(k)) for k, v in data.items() if k != PATH_KEY}
        out[PATH_KEY] = path
        return out
    if isinstance(data, list):
        return [annotate_paths(v, f"{path}[{i}]") for i, v in enumerate(data)]
    return data


def strip_paths(data: Any) -> Any:
    """Inverse of :func:`annotate_paths`."""
    if isinstance(data, dict):
        return {k: strip_paths(v) for k, v in data.items() if k != PATH_KEY}
    if isinstance(data, list):
        return [strip_paths(v) for v in data]
    return data
