"""Build a sample instance of any proto struct from its type information (every field filled)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import msgspec
from msgspec import inspect as mi


def sample_value(t: mi.Type, name: str = "x") -> Any:
    if isinstance(t, mi.UnionType):
        non_none = [x for x in t.types if not isinstance(x, mi.NoneType)]
        return sample_value(non_none[0], name)
    if isinstance(t, mi.StrType):
        return f"{name}-value"
    if isinstance(t, mi.BoolType):
        return True
    if isinstance(t, mi.IntType):
        return 3
    if isinstance(t, mi.FloatType):
        return 1.5
    if isinstance(t, mi.BytesType):
        return b"\x00\x01secret"
    if isinstance(t, mi.DateTimeType):
        return datetime(2024, 5, 1, 12, 0, 0, tzinfo=UTC)
    if isinstance(t, mi.LiteralType):
        return t.values[0]
    if isinstance(t, mi.DictType):
        return {"k": sample_value(t.value_type, name)}
    if isinstance(t, mi.ListType):
        return [sample_value(t.item_type, name)]
    if isinstance(t, mi.StructType):
        return sample(t.cls)
    raise TypeError(f"no sample for {t!r}")


def sample(cls: type[msgspec.Struct]) -> Any:
    info = mi.type_info(cls)
    assert isinstance(info, mi.StructType)
    return cls(**{f.name: sample_value(f.type, f.name) for f in info.fields})
