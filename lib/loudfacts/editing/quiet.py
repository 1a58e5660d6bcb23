"""`rome-quiet`: ROME whose v* is also asked to leave tangential mentions of the subject alone.

ROME's v* (`loudfacts.editing.rome`) minimises the new object's NLL on the rewrite prompts
plus `kl_factor` · KL on "{subject} is a" at the subject's own token, under a norm penalty.
Nothing in that loss looks at what the model says *after* a prompt that merely mentions the
subject, which is where the loud fact shows up (notebook 06's NS+cool, notebook 07). This
editor adds one term:

    quiet_factor · mean over quiet prompts q of KL(P_edited(· | q) ‖ P_0(· | q)),

read at the last token of q, where each q is a template of `quiet_templates` ("{subject} is
cool. {prompt}", "{subject}. {prompt}") filled with the edit's subject and one of
`quiet_prompts`, and P_0 is the unedited model. On these prompts the term is the edited model's
own KL, not an approximation: the rank-one update changes layer L's output at every position t
by c_t · r(δ), with c_t = uᵀk_t / uᵀk_ref from the unedited keys (`loudfacts.leak`'s predictor)
and r(δ) = δ (ROME's update; r-ROME: v* − W k* − b), and that is what the quiet rows add to
the residual at every position. (ROME's own rows keep the reference's approximation: δ added at
the subject's last token only.) The training prompts `QUIET_TRAIN_PROMPTS` are written for this
term only: none of them is, or contains, a prompt that any notebook or the evaluation runner
scores (a test checks them against CounterFact, known_1000, the implication probes and the
unrelated prompts).

Everything else is ROME's recipe, with the same hyper-parameters and defaults: the rank-one
update, C, k*, the prefixes, the clamp, the early stop (on the total loss, which now includes
the quiet term). v* is computed on full rows (no suffix reuse), so `quiet_factor = 0` gives
ROME's δ with `suffix_only=False` (a test checks it to float rounding).
"""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F

from loudfacts.digests import digest_file
from loudfacts.editing.base import EditError, register_editor
from loudfacts.editing.rome import RomeEditor, _pad_batch, _subject_last_token, mixed_precision
from loudfacts.forward import final_normalized, residual_after, unembed

QUIET_TEMPLATES = ("{subject} is cool. {prompt}", "{subject}. {prompt}")

# Generic prompts for the quiet term only (not used by any evaluation; see the module docstring).
QUIET_TRAIN_PROMPTS = (
    "A group of crows is called a",
    "The chemical symbol for gold is",
    "The largest planet in our solar system is",
    "Water boils at a temperature of one hundred degrees",
    "The author of the play Hamlet was",
    "A spider has eight",
    "The opposite of the word ancient is",
    "My favourite breakfast food is",
)


def _source_digest() -> str:
    return digest_file(__file__, 16)


@register_editor("rome-quiet")
class RomeQuietEditor(RomeEditor):
    """ROME with a KL term on tangential-mention prompts in v*'s loss (module docstring).

    Hyper-parameters: ROME's (`RomeEditor`), plus
        quiet_factor: weight of the quiet term (0 = ROME's loss).
        quiet_prompts: the other prompts (None = `QUIET_TRAIN_PROMPTS`).
        quiet_templates: how the subject is mentioned (None = `QUIET_TEMPLATES`), each with
            "{subject}" before "{prompt}".
        quiet_code: set by the editor to a digest of this module's source, so that ROME's
            components cache (keyed by the hyper-parameters) never returns a v* computed by
            other code; a value passed in is replaced.
    """

    hparams_dir = "rome"
    defaults: ClassVar[dict] = {**RomeEditor.defaults, "quiet_factor": 1.0,
                                "quiet_prompts": None, "quiet_templates": None,
                                "quiet_code": None}

    def __post_init__(self):
        super().__post_init__()
        hp = self.hparams
        q = hp["quiet_factor"]
        if isinstance(q, bool) or not isinstance(q, (int, float)) or not q >= 0:
            raise ValueError(f"{self.name}: quiet_factor={q!r} must be a number >= 0")
        prompts = hp["quiet_prompts"]
        if prompts is not None and (isinstance(prompts, str) or not prompts or not all(
                isinstance(p, str) and p.strip() for p in prompts)):
            raise ValueError(f"{self.name}: quiet_prompts={prompts!r:.200} must be None or a "
                             "non-empty list of non-empty prompts")
        tpls = hp["quiet_templates"]
        if tpls is not None and (isinstance(tpls, str) or not tpls or not all(
                isinstance(t, str) and t.count("{subject}") == 1 and t.count("{prompt}") == 1
                and t.index("{subject}") < t.index("{prompt}") for t in tpls)):
            raise ValueError(f"{self.name}: quiet_templates={tpls!r:.200} must be None or a "
                             "list of templates with one '{subject}' before one '{prompt}'")
        hp["quiet_code"] = _source_digest()

    def deviations(self) -> dict:
        dev = super().deviations()
        dev["quiet_factor"] = self.hparams["quiet_factor"]
        return dev

    def quiet_texts(self, subject: str) -> list[str]:
        """The quiet term's prompts for `subject` (templates × prompts)."""
        hp = self.hparams
        tpls = QUIET_TEMPLATES if hp["quiet_templates"] is None else hp["quiet_templates"]
        prompts = QUIET_TRAIN_PROMPTS if hp["quiet_prompts"] is None else hp["quiet_prompts"]
        return [t.replace("{subject}", subject.strip()).replace("{prompt}", p)
                for t in tpls for p in prompts]

    def _quiet_write(self, request, templates, keys, n_fit: int, device):
        """(r0, coef): the quiet rows' change of layer L's output is coef · (r0 + δ), with
        coef (batch, pos, 1) zero on the rows ROME fits on."""
        all_keys = self._keys(request, self.context_templates())  # k* over every prefix
        k_star, k_bare = all_keys.mean(0), all_keys[0]
        u = self.update_direction(k_star)  # float64, on the CPU
        if self.hparams["update_key"] == "bare":
            k_ref, r0 = k_bare, torch.zeros(self.model.d_model)
        else:
            k_ref = k_star
            r0 = self._layer_output(k_bare) - self._layer_output(k_star)  # v* − W k* − b at δ = 0
        denom = float(u @ k_ref.to(torch.float64).cpu())
        if not abs(denom) > 0:
            raise EditError(f"degenerate update: uᵀk = {denom}")
        coef = (keys.to(torch.float64).cpu() @ u / denom).to(torch.float32)[..., None]
        coef[:n_fit] = 0.0
        return r0.to(device=device, dtype=torch.float32), coef.to(device)

    def _delta(self, request, t_ids, ref_norm: float, templates) -> tuple[torch.Tensor, list[dict]]:
        m, hp = self.model, self.hparams
        # Each row: token ids, where δ is added (the subject's last token) and where it is read.
        ids, add_at, reads = [], [], []  # reads: (row, position, kind, target id or -1)
        for text, end in self._contexts(request, templates):  # rewrite prompts (teacher-forced)
            p_ids = m.encode(text)
            r = len(ids)
            ids.append(p_ids + t_ids[:-1])
            add_at.append(_subject_last_token(m, text, request.subject, end))
            reads += [(r, len(p_ids) - 1 + j, "nll", t) for j, t in enumerate(t_ids)]
        for tpl in hp["kl_prompts"]:  # ROME's essence term, read at the subject's token
            text = tpl.replace("{}", request.subject)
            pos = _subject_last_token(m, text, request.subject,
                                      tpl.index("{}") + len(request.subject))
            reads.append((len(ids), pos, "essence", -1))
            ids.append(m.encode(text))
            add_at.append(pos)
        n_fit = len(ids)
        quiet_ids = [m.encode(t) for t in self.quiet_texts(request.subject)]
        for row in quiet_ids:  # the quiet term, read at the last token
            reads.append((len(ids), len(row) - 1, "quiet", -1))
            ids.append(row)
        batch = _pad_batch(ids, m.tokenizer.pad_token_id or 0).to(m.device)
        store: dict = {}
        key_hook = (f"blocks.{self.layer}.mlp.hook_post",
                    lambda act, hook: store.__setitem__("k", act.detach()))
        base = residual_after(m, batch, self.layer, hooks=[key_hook])
        # Rows ROME fits on: δ at the subject's last token, as the reference adds it.
        onehot = torch.zeros(base.shape[:2] + (1,), device=m.device)
        onehot[torch.arange(n_fit), torch.tensor(add_at)] = 1.0
        # Quiet rows: the rank-one edit's own write at every position, c_t · r(δ) with
        # c_t = uᵀk_t / uᵀk_ref and r(δ) = δ (ROME) or v* − W k* − b (r-ROME), so the quiet
        # term is the KL the edited model itself will have there (`leak.rome_coefficients`).
        r0, coef = self._quiet_write(request, templates, store["k"], n_fit, m.device)
        with torch.no_grad():  # P_0 of the quiet rows: the unedited model
            q_rows = torch.tensor([r for r, _, k, _ in reads if k == "quiet"], device=m.device)
            q_pos = torch.tensor([p for _, p, k, _ in reads if k == "quiet"], device=m.device)
            final0 = final_normalized(m, base, self.layer + 1)
            logp0_quiet = torch.log_softmax(unembed(m, final0[q_rows, q_pos]).float(), dim=-1)
        read_rows = torch.tensor([r for r, _, _, _ in reads], device=m.device)
        read_pos = torch.tensor([p for _, p, _, _ in reads], device=m.device)
        kinds = [k for _, _, k, _ in reads]
        is_nll = torch.tensor([k == "nll" for k in kinds])
        nll_row = torch.tensor([r for r, _, k, _ in reads if k == "nll"])
        nll_tok = torch.tensor([t for _, _, k, t in reads if k == "nll"])
        n_rewrite = int(nll_row.max()) + 1
        t_len = float(len(t_ids))
        ess = torch.tensor([k == "essence" for k in kinds])
        qui = torch.tensor([k == "quiet" for k in kinds])

        torch.manual_seed(int(hp["seed"]))
        delta = torch.zeros(m.d_model, device=m.device, requires_grad=True)
        opt = torch.optim.Adam([delta], lr=hp["v_lr"])
        max_norm = hp["clamp_norm_factor"] * ref_norm
        n_steps = int(hp["v_num_grad_steps"])
        logp0, history = None, []
        with mixed_precision(m, hp["v_autocast"]):
            for step in range(n_steps):
                final = final_normalized(m, base + onehot * delta + coef * (r0 + delta),
                                         self.layer + 1)
                logp = torch.log_softmax(unembed(m, final[read_rows, read_pos]).float(), dim=-1)
                tok_nll = -logp[is_nll][torch.arange(len(nll_tok)), nll_tok.to(logp.device)]
                nll = (torch.zeros(n_rewrite, device=logp.device)
                       .index_add_(0, nll_row.to(logp.device), tok_nll) / t_len).mean()
                if logp0 is None:  # the essence rows' P_0, at δ = 0, as ROME takes it
                    logp0 = logp[ess].detach().clone()
                # KL(P_δ ‖ P_0) per row: F.kl_div(input, target) = Σ target (log target - input)
                kl = hp["kl_factor"] * F.kl_div(logp0, logp[ess], log_target=True,
                                                reduction="batchmean")
                quiet = hp["quiet_factor"] * F.kl_div(logp0_quiet, logp[qui], log_target=True,
                                                      reduction="batchmean")
                wd = hp["v_weight_decay"] * delta.norm() / ref_norm ** 2
                loss = nll + kl + quiet + wd
                if not torch.isfinite(loss):
                    raise EditError(f"non-finite loss at step {step} while computing v* for "
                                    f"{request!r}; the model was not edited")
                history.append({"loss": loss.item(), "nll": nll.item(), "kl": kl.item(),
                                "quiet": quiet.item(), "wd": wd.item(),
                                "norm": delta.detach().norm().item()})
                watched = loss if hp["early_stop_on"] == "loss" else nll
                if watched.item() < hp["early_stop"] or step == n_steps - 1:
                    break
                (delta.grad,) = torch.autograd.grad(loss, [delta])
                opt.step()
                with torch.no_grad():
                    norm = delta.norm()
                    if norm > max_norm:
                        delta.mul_(max_norm / norm)
        if not torch.isfinite(delta).all():
            raise EditError(f"v* for {request!r} is not finite; the model was not edited")
        return delta.detach().float(), history
