"""Fact editors under one contract (see `loudfacts.editing.base`)."""

from loudfacts.editing.base import (
    ComposedEdit,
    Edit,
    EditError,
    Editor,
    EditRequest,
    HookEdit,
    NoEdit,
    WeightEdit,
    available_editors,
    compose,
    get_editor,
    load_hparams,
    register_editor,
    validate_request,
)

__all__ = [
    "ComposedEdit",
    "Edit",
    "EditError",
    "EditRequest",
    "Editor",
    "HookEdit",
    "NoEdit",
    "WeightEdit",
    "available_editors",
    "compose",
    "get_editor",
    "load_hparams",
    "register_editor",
    "validate_request",
]
