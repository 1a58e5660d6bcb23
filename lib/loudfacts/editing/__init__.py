"""Fact editors under one contract (see `loudfacts.editing.base`)."""

from loudfacts.editing.base import (
    MAX_TARGET_TOKENS,
    ComposedEdit,
    Edit,
    EditError,
    Editor,
    EditRequest,
    HookEdit,
    NoEdit,
    WeightEdit,
    available_editors,
    check_hparam_type,
    compose,
    get_editor,
    load_hparams,
    register_editor,
    validate_request,
)

__all__ = [
    "MAX_TARGET_TOKENS",
    "ComposedEdit",
    "Edit",
    "EditError",
    "EditRequest",
    "Editor",
    "HookEdit",
    "NoEdit",
    "WeightEdit",
    "available_editors",
    "check_hparam_type",
    "compose",
    "get_editor",
    "load_hparams",
    "register_editor",
    "validate_request",
]

# Editors that live outside base's built-in list register themselves on import.
from loudfacts.editing import quiet as _quiet  # noqa: E402,F401
from loudfacts.editing import gated as _gated  # noqa: E402,F401
from loudfacts.editing import scaled as _scaled  # noqa: E402,F401
