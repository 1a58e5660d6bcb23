"""One contract for every way of editing a fact.

    req = EditRequest(prompt="{} is located in the city of", subject="The Louvre",
                      target_new="Rome", target_true="Paris")
    editor = get_editor("rome", model)          # or "ft", "ft-l", "patch-donor", ...
    edit = editor.edit(req)                      # computes the edit; the model is unchanged
    with edit.applied():                         # the edit is in place only inside the block
        ...

An `Edit` is either a `WeightEdit` (new values for some parameters; the originals are kept and
written back bit-exactly on exit, also when the block raises) or a `HookEdit` (TransformerLens
hooks registered on the bridge for the block's duration and removed on exit). Code that
evaluates edits only ever calls `applied()`, so it never needs to know which kind it holds.
Several edits are applied in sequence with `compose(edits)`; ROME-style sequential editing
(each edit computed on the already-edited model) is `editor.edit_sequence(requests)`.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from typing import ClassVar

import torch

from loudfacts.paths import repo_path
from loudfacts.tokens import fill, find_subject_spans, target_ids


class EditError(ValueError):
    """An edit request that cannot be carried out (the model is left unedited)."""


@dataclass(frozen=True)
class EditRequest:
    """A fact to write: `prompt.format(subject)` should continue with `target_new`.

    Attributes:
        prompt: template with one `{}` for the subject, e.g. "{} is located in the city of".
        subject: e.g. "The Louvre".
        target_new: the new object, e.g. "Rome" (scored as " Rome").
        target_true: the object the model holds now, if known ("Paris").
        case_id: optional id of the CounterFact record it came from.
    """

    prompt: str
    subject: str
    target_new: str
    target_true: str | None = None
    case_id: int | str | None = None

    def __post_init__(self):
        if not isinstance(self.prompt, str) or self.prompt.count("{}") != 1:
            raise EditError(
                f"EditRequest.prompt {self.prompt!r} must contain exactly one '{{}}' for the "
                f"subject, e.g. '{{}} is located in the city of'"
            )
        if not isinstance(self.subject, str) or not self.subject.strip():
            raise EditError(f"EditRequest.subject {self.subject!r} is empty")
        if not isinstance(self.target_new, str) or not self.target_new.strip():
            raise EditError(f"EditRequest.target_new {self.target_new!r} is empty")
        if self.target_true is not None and self.target_true.strip() == self.target_new.strip():
            raise EditError(
                f"EditRequest.target_new {self.target_new!r} equals target_true: nothing to edit"
            )

    @property
    def text(self) -> str:
        """The rewrite prompt with the subject in place."""
        return fill(self.prompt, self.subject)

    @property
    def statement(self) -> str:
        """The new fact as a sentence: "The Louvre is located in the city of Rome."."""
        return f"{self.text} {self.target_new.strip()}."

    @classmethod
    def from_record(cls, record) -> EditRequest:
        """From a normalised CounterFact record (`loudfacts.data.CounterFactRecord`)."""
        return cls(
            prompt=record.prompt,
            subject=record.subject,
            target_new=record.target_new,
            target_true=record.target_true,
            case_id=record.case_id,
        )

    def to_dict(self) -> dict:
        return asdict(self)


def validate_request(model, request: EditRequest) -> list[int]:
    """Check a request against a model's tokenizer; return target_new's token ids.

    Raises:
        EditError: the subject does not tokenise inside the prompt, or the target is empty.
    """
    if not isinstance(request, EditRequest):
        raise EditError(f"expected an EditRequest, got {type(request).__name__}: {request!r}")
    text = request.text
    if not find_subject_spans(model, text, request.subject):
        raise EditError(f"subject {request.subject!r} not found in prompt {text!r}")
    try:
        return target_ids(model, request.target_new)
    except ValueError as e:
        raise EditError(f"target_new of {request!r}: {e}") from e


class Edit:
    """An edit ready to apply. Subclasses implement `_apply()` and `_restore()`.

    Attributes:
        requests: the request(s) this edit writes.
        editor: name of the editor that made it.
        info: what the editor measured while computing it (timings, norms, losses).
    """

    kind = "none"

    def __init__(self, requests, editor: str, info: dict | None = None):
        self.requests = list(requests) if isinstance(requests, (list, tuple)) else [requests]
        self.editor = editor
        self.info = dict(info or {})
        self._active = False

    @property
    def request(self) -> EditRequest:
        return self.requests[0]

    @contextlib.contextmanager
    def applied(self):
        """Put the edit in place for the duration of the block; always undo it on exit."""
        if self._active:
            raise RuntimeError(f"{self!r} is already applied; applied() does not nest")
        self._active = True
        try:
            self._apply()
            yield self
        finally:
            try:
                self._restore()
            finally:
                self._active = False

    def _apply(self):  # pragma: no cover - trivial
        pass

    def _restore(self):  # pragma: no cover - trivial
        pass

    def __repr__(self):
        r = self.requests[0]
        more = f" (+{len(self.requests) - 1})" if len(self.requests) > 1 else ""
        return f"<{type(self).__name__} {self.editor}: {r.text!r} -> {r.target_new!r}{more}>"


class NoEdit(Edit):
    """The unedited model: applying it changes nothing (the evaluation's baseline)."""


class WeightEdit(Edit):
    """New values for some parameters, addressed by module path ("model.layers.5.mlp.down_proj").

    Args:
        model: the LoadedModel.
        new_weights: {module_path: tensor with the full new `weight`}.
    """

    kind = "weights"

    def __init__(self, model, new_weights: dict[str, torch.Tensor], requests, editor, info=None):
        super().__init__(requests, editor, info)
        self.model = model
        self.new_weights = {}
        for path, w in new_weights.items():
            param = model.module(path).weight
            if tuple(w.shape) != tuple(param.shape):
                raise EditError(
                    f"new weight for {path} has shape {tuple(w.shape)}, expected {tuple(param.shape)}"
                )
            if not torch.isfinite(w).all():
                raise EditError(f"new weight for {path} has non-finite values; edit refused")
            self.new_weights[path] = w.detach().to(param.device, param.dtype)
        self._saved: dict[str, torch.Tensor] = {}

    def deltas(self) -> dict[str, torch.Tensor]:
        """New minus current weights (current = unedited when not applied)."""
        return {p: w - self.model.module(p).weight.detach() for p, w in self.new_weights.items()}

    @torch.no_grad()
    def _apply(self):
        self._saved = {}
        for path, w in self.new_weights.items():
            param = self.model.module(path).weight
            self._saved[path] = param.detach().clone()
            param.copy_(w)

    @torch.no_grad()
    def _restore(self):
        for path, w in self._saved.items():
            self.model.module(path).weight.copy_(w)
        self._saved = {}


HookList = list[tuple[str, Callable]]


class HookEdit(Edit):
    """TransformerLens hooks on the bridge, registered only while applied.

    Args:
        model: the LoadedModel.
        hooks: [(hook_name, fn(act, hook) -> act | None)], or a callable returning that list
            (called on every apply, so per-forward state can be reset).

    The bridge wraps the HF module in place, so the hooks fire on forwards through either
    `model.bridge` or `model.hf` (and `model.generate`).
    """

    kind = "hooks"

    def __init__(self, model, hooks, requests, editor, info=None):
        super().__init__(requests, editor, info)
        self.model = model
        self._hooks = hooks
        self._ctx = None

    def hook_list(self) -> HookList:
        return self._hooks() if callable(self._hooks) else list(self._hooks)

    def _apply(self):
        self._ctx = self.model.bridge.hooks(fwd_hooks=self.hook_list())
        self._ctx.__enter__()

    def _restore(self):
        if self._ctx is not None:
            ctx, self._ctx = self._ctx, None
            ctx.__exit__(None, None, None)


class ComposedEdit(Edit):
    """Several edits in place together, applied in order and undone in reverse order."""

    def __init__(self, edits: Iterable[Edit]):
        edits = list(edits)
        if not edits:
            raise EditError("compose() needs at least one edit")
        super().__init__(
            [r for e in edits for r in e.requests], "+".join(sorted({e.editor for e in edits}))
        )
        self.edits = edits
        self._stack = None
        self.kind = "+".join(sorted({e.kind for e in edits}))

    def _apply(self):
        self._stack = contextlib.ExitStack()
        try:
            for e in self.edits:
                self._stack.enter_context(e.applied())
        except BaseException:
            self._stack.close()
            self._stack = None
            raise

    def _restore(self):
        if self._stack is not None:
            stack, self._stack = self._stack, None
            stack.close()


def compose(edits: Iterable[Edit]) -> ComposedEdit:
    return ComposedEdit(edits)


@dataclass
class Editor:
    """Base class: subclasses set `name`, `defaults` and implement `_compute(request)`.

    `hparams` are the class defaults, overridden by `hparams/<method>/<model>.json` when it
    exists for this model, overridden by keyword arguments to `get_editor`.
    """

    model: object
    hparams: dict = field(default_factory=dict)

    name: ClassVar[str] = "base"
    hparams_dir: ClassVar[str | None] = None  # folder under hparams/
    defaults: ClassVar[dict] = {}

    def __post_init__(self):
        merged = dict(self.defaults)
        if self.hparams_dir:
            merged.update(load_hparams(self.hparams_dir, self.model.name, section=self.name))
        unknown = set(self.hparams) - set(merged)
        if unknown:
            raise ValueError(
                f"unknown hyper-parameter(s) {sorted(unknown)} for editor {self.name!r}; "
                f"known: {sorted(merged)}"
            )
        merged.update(self.hparams)
        self.hparams = merged

    def edit(self, request: EditRequest) -> Edit:
        """Compute the edit for one request; the model is unchanged when this returns."""
        validate_request(self.model, request)
        t0 = time.perf_counter()
        edit = self._compute(request)
        edit.info.setdefault("seconds", time.perf_counter() - t0)
        return edit

    def edit_sequence(self, requests: Iterable[EditRequest]) -> ComposedEdit:
        """Edits computed one after another, each on the model with the earlier ones applied."""
        done: list[Edit] = []
        with contextlib.ExitStack() as stack:
            for r in requests:
                e = self.edit(r)
                stack.enter_context(e.applied())
                done.append(e)
        return compose(done)

    def _compute(self, request: EditRequest) -> Edit:  # pragma: no cover - abstract
        raise NotImplementedError


class Unedited(Editor):
    """The null editor: `edit()` returns a `NoEdit` (for baselines in evaluation tables)."""

    name = "unedited"

    def edit(self, request):
        validate_request(self.model, request)
        return NoEdit(request, self.name, {"seconds": 0.0})


_REGISTRY: dict[str, type[Editor]] = {"unedited": Unedited}


def register_editor(name: str):
    """Class decorator: make an Editor subclass available to `get_editor(name, ...)`."""

    def deco(cls):
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return deco


def _load_builtin_editors():
    import importlib

    for mod in ("rome", "finetune", "patching"):
        try:
            importlib.import_module(f"loudfacts.editing.{mod}")
        except ModuleNotFoundError as e:  # a method not written yet
            if e.name != f"loudfacts.editing.{mod}":
                raise


def available_editors() -> list[str]:
    _load_builtin_editors()
    return sorted(_REGISTRY)


def get_editor(name: str, model, **hparams) -> Editor:
    """An editor by name ("unedited", "rome", "ft", "ft-l", "patch-donor", "patch-context",
    "hook-delta") for `model`, with hyper-parameter overrides as keyword arguments."""
    _load_builtin_editors()
    if name not in _REGISTRY:
        raise ValueError(f"unknown editor {name!r}; available: {sorted(_REGISTRY)}")
    return _REGISTRY[name](model=model, hparams=hparams)


def hparams_path(method: str, model_name: str):
    return repo_path("hparams", method, f"{model_name.replace('/', '_')}.json")


_NOT_HPARAMS = ("evidence", "notes", "source")


def load_hparams(method: str, model_name: str, section: str | None = None) -> dict:
    """`hparams/<method>/<model>.json` without its "evidence"/"notes" keys ({} if absent).

    A file may hold one section per editor ({"ft": {...}, "ft-l": {...}, "evidence": ...}):
    then `section` picks one ({} when it is missing). A flat file applies to every editor.

    Raises:
        ValueError: the file is not valid JSON (naming the file).
    """
    path = hparams_path(method, model_name)
    if not path.exists():
        return {}
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON: {e}") from e
    # Sections are dict values named after an editor (a flat file may hold dict-valued
    # hyper-parameters too, so a dict alone does not make a section).
    names = set(_REGISTRY) | ({section} if section else set())
    sectioned = any(isinstance(v, dict) and k in names for k, v in data.items())
    if sectioned:
        data = data.get(section, {}) if section else {}
    return {k: v for k, v in data.items() if k not in _NOT_HPARAMS}
