"""Response models filled from stored rows.

view_of(Model, row, **values)   `Model` with each field from `values` or else `row`'s attribute of that name
"""

from __future__ import annotations

from typing import Any, TypeVar

from pydantic import BaseModel

__all__ = ["view_of"]

View = TypeVar("View", bound=BaseModel)


def view_of(model: type[View], row: object, **values: Any) -> View:
    """`model` with each field taken from `values` or else from `row`'s attribute of the same name (a frozen row
    from the store). Not validated: stored values are valid by construction, and Money validates strings only."""
    fields: dict[str, Any] = {
        name: values[name] if name in values else getattr(row, name) for name in model.model_fields
    }
    return model.model_construct(**fields)
