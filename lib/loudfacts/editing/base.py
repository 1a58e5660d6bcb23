"""One contract for every way of editing a fact.

    req = EditRequest(prompt="{} is located in the city of", subject="The Louvre",
                      target_new="Rome", target_true="Paris")
    editor = get_editor("rome", model)          # or "ft", "ft-l", "patch-donor", ...
    edit = editor.edit(req)                      # computes the edit; the model is unchanged
    with edit.applied():                         # the edit is in place only inside the block
        ...

An `Edit` is either a `WeightEdit` (changes of some parameters, added on apply; the values
before the apply are kept and written back bit-exactly on exit, also when the block raises, so
weight edits stack) or a `HookEdit` (TransformerLens hooks registered on the bridge for the
block's duration and removed on exit). Code that
evaluates edits only ever calls `applied()`, so it never needs to know which kind it holds.
Several edits are applied in sequence with `compose(edits)`; ROME-style sequential editing
(each edit computed on the already-edited model) is `editor.edit_sequence(requests)`.
"""

from __future__ import annotations

import contextlib
import json
import math
import numbers
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from typing import ClassVar

import torch

from loudfacts.digests import remembered_digest, restored_weights
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
        for name in ("prompt", "subject", "target_new"):
            _check_text_field(name, getattr(self, name))
        if self.prompt.count("{}") != 1:
            raise EditError(
                f"EditRequest.prompt {_short(self.prompt)} must contain exactly one '{{}}' for "
                f"the subject, e.g. '{{}} is located in the city of'"
            )
        if self.target_true is not None:
            _check_text_field("target_true", self.target_true, hint="or None when unknown")
            if self.target_true.strip() == self.target_new.strip():
                raise EditError(
                    f"EditRequest.target_new {self.target_new!r} equals target_true: nothing "
                    "to edit"
                )
        cid = self.case_id
        if cid is not None and (
            _is_bool(cid) or not isinstance(cid, (numbers.Integral, str))
        ):
            raise EditError(
                f"EditRequest.case_id must be an int, a str or None, got "
                f"{type(cid).__name__}: {_short(cid)}"
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


def _short(value, n: int = 80) -> str:
    """repr of a value, cut to about n characters (long prompts in error messages)."""
    r = repr(value)
    return r if len(r) <= n else f"{r[:n]}... ({len(r)} characters)"


def _is_bool(value) -> bool:
    return isinstance(value, bool) or type(value).__name__ == "bool_"  # numpy.bool_


def _check_text_field(name: str, value, hint: str = "") -> None:
    if not isinstance(value, str):
        raise EditError(
            f"EditRequest.{name} must be a str{' ' + hint if hint else ''}, got "
            f"{type(value).__name__}: {_short(value)}"
        )
    if not value.strip():
        raise EditError(f"EditRequest.{name} {value!r} is empty")


# Longest target_new accepted (tokens). CounterFact objects are 1-5 tokens; a very long target
# makes every optimisation step of ROME and FT slow for nothing (a 360-token one hung ROME).
MAX_TARGET_TOKENS = 32


def validate_request(model, request: EditRequest) -> list[int]:
    """Check a request against a model's tokenizer; return target_new's token ids.

    Raises:
        EditError: not an EditRequest; the target is empty or longer than MAX_TARGET_TOKENS
            tokens; the rewrite prompt plus the target do not fit the model's context window
            (`model.n_ctx`); the subject does not tokenise inside the prompt.
    """
    if not isinstance(request, EditRequest):
        raise EditError(f"expected an EditRequest, got {type(request).__name__}: {_short(request)}")
    text = request.text
    try:
        t_ids = target_ids(model, request.target_new)
    except ValueError as e:
        raise EditError(f"target_new of {request!r}: {e}") from e
    if len(t_ids) > MAX_TARGET_TOKENS:
        raise EditError(
            f"target_new {_short(request.target_new)} is {len(t_ids)} tokens long; at most "
            f"MAX_TARGET_TOKENS={MAX_TARGET_TOKENS} tokens are accepted (an object, not a text)"
        )
    n_prompt = len(model.encode(text))
    n_ctx = getattr(model, "n_ctx", None)
    if n_ctx is not None and n_prompt + len(t_ids) > n_ctx:
        raise EditError(
            f"rewrite prompt {_short(text)} ({n_prompt} tokens) plus target_new "
            f"({len(t_ids)} tokens) is {n_prompt + len(t_ids)} tokens, longer than "
            f"{getattr(model, 'name', 'the model')}'s context window of {n_ctx} tokens"
        )
    if not find_subject_spans(model, text, request.subject):
        raise EditError(f"subject {request.subject!r} not found in prompt {_short(text)}")
    return t_ids


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
    """Additive changes of some parameters, addressed by module path ("model.layers.5.mlp.down_proj").

    The edit is stored as *deltas* (new minus original, float64, computed when the edit is
    built), and applying it adds them to the weights the parameter holds at that moment. So
    edits stack: two edits of the same matrix applied together (nested `applied()` blocks,
    `compose([a, b])`, `editor.edit_sequence(...)`) keep both changes. On exit each
    parameter gets back exactly the bytes it had just before this edit's apply (a saved copy
    is written back, also when the block raises), so restoring the inner edit and then the
    outer one gives back the original weights bit for bit.

    For a single edit applied to the weights it was computed on, `w + (new - w)` in float64
    rounds back to `new` exactly, so it writes the same weights as copying `new` would.

    Args:
        model: the LoadedModel.
        new_weights: {module_path: tensor with the full new `weight`}; the deltas are taken
            against the weights the model holds now. Use `WeightEdit.from_deltas` to give the
            changes themselves.
        deltas: (keyword only, instead of new_weights) {module_path: change of `weight`}.
    """

    kind = "weights"

    def __init__(self, model, new_weights: dict[str, torch.Tensor] | None, requests, editor,
                 info=None, *, deltas: dict[str, torch.Tensor] | None = None):
        super().__init__(requests, editor, info)
        self.model = model
        if (new_weights is None) == (deltas is None):
            raise EditError("WeightEdit needs exactly one of new_weights and deltas")
        given, what = (new_weights, "new weight") if deltas is None else (deltas, "delta")
        if not isinstance(given, dict) or not given:
            raise EditError(f"WeightEdit needs a non-empty {{module_path: tensor}} of {what}s, "
                            f"got {_short(given)}")
        self._deltas: dict[str, torch.Tensor] = {}
        owners: dict[int, str] = {}
        for path, w in given.items():
            try:
                param = model.module(path).weight
            except AttributeError as e:
                raise EditError(f"{what} for {path!r}: no such module with a weight in "
                                f"{getattr(model, 'name', 'the model')} ({e})") from e
            if id(param) in owners:  # tied weights: the change would be added twice
                raise EditError(f"{what}s for {owners[id(param)]!r} and {path!r} address the "
                                "same parameter (tied weights); give it once")
            owners[id(param)] = path
            if not isinstance(w, torch.Tensor):
                raise EditError(f"{what} for {path} must be a tensor, got {type(w).__name__}")
            if tuple(w.shape) != tuple(param.shape):
                raise EditError(
                    f"{what} for {path} has shape {tuple(w.shape)}, expected {tuple(param.shape)}"
                )
            if not torch.isfinite(w).all():
                raise EditError(f"{what} for {path} has non-finite values; edit refused")
            dtype = _delta_dtype(param)
            w = w.detach().to(param.device, dtype)
            self._deltas[path] = w if deltas is not None else w - param.detach().to(dtype)
        self._saved: dict[str, torch.Tensor] = {}

    @classmethod
    def from_deltas(cls, model, deltas: dict[str, torch.Tensor], requests, editor, info=None):
        """A weight edit from the changes themselves ({module_path: delta of `weight`})."""
        return cls(model, None, requests, editor, info, deltas=deltas)

    @property
    def paths(self) -> list[str]:
        return list(self._deltas)

    def deltas(self) -> dict[str, torch.Tensor]:
        """The change this edit adds to each weight (float64 on CPU/CUDA; do not modify)."""
        return dict(self._deltas)

    @property
    def new_weights(self) -> dict[str, torch.Tensor]:
        """The weights this edit writes: the current weights (those before its apply while it
        is applied) plus its deltas, in the parameters' dtype."""
        out = {}
        for path, d in self._deltas.items():
            param = self.model.module(path).weight
            base = self._saved.get(path, param.detach())
            out[path] = (base.to(d.dtype) + d).to(param.dtype)
        return out

    @torch.no_grad()
    def _apply(self):
        self._saved = {}
        # the remembered digest of the weights as they are now, if any (`_restore`)
        self._digest_before = remembered_digest(self.model)
        for path, d in self._deltas.items():
            param = self.model.module(path).weight
            before = param.detach().clone()
            new = (before.to(d.dtype) + d).to(param.dtype)
            if not torch.isfinite(new).all():
                raise EditError(f"{self!r}: adding the delta to {path} gives non-finite "
                                f"{param.dtype} weights; edit not applied")
            self._saved[path] = before  # saved before writing: restored even if copy_ fails
            param.copy_(new)

    @torch.no_grad()
    def _restore(self):
        saved, self._saved = self._saved, {}
        for path, w in reversed(list(saved.items())):
            self.model.module(path).weight.copy_(w)
        # the bytes are the ones hashed before the apply: no need to hash them again
        # (`digests.restored_weights` checks that nothing else was written meanwhile)
        before, self._digest_before = getattr(self, "_digest_before", None), None
        restored_weights(self.model, before, [self.model.module(p).weight for p in saved])


def _delta_dtype(param: torch.Tensor) -> torch.dtype:
    """float64 where the device has it (exact differences of float32 weights), else float32."""
    return torch.float32 if param.device.type == "mps" else torch.float64


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
    exists for this model, overridden by keyword arguments to `get_editor`. Keys that are not
    in `defaults` fail (in the file too, except its "evidence"/"notes"/"source" documentation),
    and so does a value whose type is not its default's (`check_hparam_type`: `layer=5.7`
    where the default is 5, `layer=True`), with a ValueError naming editor, key and value.
    """

    model: object
    hparams: dict = field(default_factory=dict)

    name: ClassVar[str] = "base"
    hparams_dir: ClassVar[str | None] = None  # folder under hparams/
    defaults: ClassVar[dict] = {}

    def __post_init__(self):
        merged = dict(self.defaults)
        source = {k: "class default" for k in merged}
        if self.hparams_dir:
            path = hparams_path(self.hparams_dir, self.model.name)
            from_file = load_hparams(self.hparams_dir, self.model.name, section=self.name)
            unknown = set(from_file) - set(merged)
            if unknown:
                raise ValueError(
                    f"{path}: unknown hyper-parameter(s) {sorted(unknown)} for editor "
                    f"{self.name!r}; known: {sorted(merged)} (documentation goes under one "
                    f"of {list(_NOT_HPARAMS)})"
                )
            merged.update(from_file)
            source.update({k: str(path) for k in from_file})
        if not isinstance(self.hparams, dict):
            raise ValueError(f"hparams for editor {self.name!r} must be a dict, got "
                             f"{_short(self.hparams)}")
        unknown = set(self.hparams) - set(merged)
        if unknown:
            raise ValueError(
                f"unknown hyper-parameter(s) {sorted(unknown)} for editor {self.name!r}; "
                f"known: {sorted(merged)}"
            )
        merged.update(self.hparams)
        source.update({k: "keyword argument" for k in self.hparams})
        for key, value in merged.items():
            if key in self.defaults:
                check_hparam_type(self.name, key, value, self.defaults[key], source[key])
                merged[key] = _plain_number(value)
        self.hparams = merged

    def edit(self, request: EditRequest) -> Edit:
        """Compute the edit for one request; the model is unchanged when this returns."""
        validate_request(self.model, request)
        t0 = time.perf_counter()
        edit = self._compute(request)
        edit.info.setdefault("seconds", time.perf_counter() - t0)
        return edit

    # True where `edit_many` computes several requests' edits together, faster than one at a
    # time (the study's runner then hands it the known records a few at a time)
    batches_edits: ClassVar[bool] = False

    def edit_many(self, requests: Iterable[EditRequest]) -> list:
        """Each request's edit, each on the unedited model, as `edit` computes it, or the
        `EditError` that `edit` raises for it (other errors propagate). This default edits one
        at a time; an editor with `batches_edits` computes them together."""
        out: list = []
        for r in requests:
            try:
                out.append(self.edit(r))
            except EditError as e:
                out.append(e)
        return out

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


def _type_ok(value, default) -> bool:
    """Does `value` have the type of `default`? (bool is not a number; an int is a float;
    a list default takes a list or tuple whose items have the type of its items; a list of
    ints also takes one int alone.)"""
    if default is None:
        return True
    if _is_bool(default):
        return _is_bool(value)
    if _is_bool(value):
        return False
    if isinstance(default, numbers.Integral):
        return isinstance(value, numbers.Integral)
    if isinstance(default, numbers.Real):
        return isinstance(value, numbers.Real)
    if isinstance(default, (list, tuple)):
        items = list(default)
        if not isinstance(value, (list, tuple)):  # layers=6 for layers=[6]
            return bool(items) and isinstance(items[0], numbers.Integral) and _type_ok(
                value, items[0])
        if items and all(type(d) is type(items[0]) for d in items):
            return all(_type_ok(v, items[0]) for v in value)
        return True
    if isinstance(default, dict):
        return isinstance(value, dict)
    return isinstance(value, type(default))


def _type_name(default) -> str:
    if _is_bool(default):
        return "a bool (True/False)"
    if isinstance(default, numbers.Integral):
        return "an int"
    if isinstance(default, numbers.Real):
        return "a number (int or float)"
    if isinstance(default, (list, tuple)):
        return f"a list like {default!r}"
    if isinstance(default, dict):
        return "a dict"
    return f"a {type(default).__name__}"


def _plain_number(value):
    """numpy scalars (a layer picked from a table, np.int64) as Python int / float."""
    if _is_bool(value) or type(value) in (int, float) or not isinstance(value, numbers.Real):
        return value
    return int(value) if isinstance(value, numbers.Integral) else float(value)


def check_hparam_type(editor: str, key: str, value, default, source: str = "") -> None:
    """Raise a ValueError naming the editor, key and value when `value` does not have the
    type of the key's class default (`_type_ok`), or is NaN where the default is a number.

    A None default accepts any value (the editor checks those itself)."""
    where = f" (from {source})" if source else ""
    if not _type_ok(value, default):
        raise ValueError(
            f"{editor}: hyper-parameter {key}={_short(value)}{where} has type "
            f"{type(value).__name__}; it must be {_type_name(default)} (default {default!r})"
        )
    if (isinstance(default, numbers.Real) and not _is_bool(default) and value is not None
            and isinstance(value, numbers.Real) and math.isnan(float(value))):
        raise ValueError(f"{editor}: hyper-parameter {key}={value!r}{where} is NaN")


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
