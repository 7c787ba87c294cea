"""What do the pause positions attend to, what do they encode, and do they matter?

* attention mass from each ``<pause>`` (``attn_mass``, ``pos`` = pause index) and from each
  SID-generating position (``attn_mass_sid``, ``pos`` = SID level) onto the prompt's segments, per
  ``layer`` and ``head``, averaged over users; early vs late pauses (``attn_mass_early/late``: the
  first and the last ``n_pauses // 2`` pauses, mean over heads);
* relevance: correlation of the attention on each history item with how much it shares with the
  target (SID prefix / categories), against targets re-paired across users (``relevance_corr*``);
* trie-restricted logit lens: each pause's residual stream after each block, through the final norm
  and the unembedding, ranked among the first-level SID codes (``lens_rank``, ``lens_top1`` per
  user);
* interventions (``--interventions``): no pauses, masked pauses, replaced pause embedding
  -> paired change in Recall/NDCG@10 (see :mod:`probes.interventions`).

Patterns and residuals come from one TransformerLens ``TransformerBridge`` pass per batch
(``blocks.{L}.attn.hook_pattern``, ``blocks.{L}.hook_resid_post``), reduced inside the hooks.

    python -m probes.attention CKPT [CKPT ...] --out DIR [--n-users 256] [--interventions]
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from pauserec import data, registry
from pauserec.config import arg
from pauserec.errors import UserError
from pauserec.evaluation import evaluate
from pauserec.model.checkpoint import Checkpoint
from pauserec.model.prompts import Encoded, PromptBuilder
from pauserec.registry import MAX_PAUSES, PAPER_PAUSES
from pauserec.teacher import rationales
from probes import activations as act
from probes import interventions
from probes._common import ProbeArgs, cli, entry, label
from probes.relevance import relevance_rows

log = logging.getLogger(__name__)
__all__ = ["Args", "compute", "main", "run"]
# PromptBuilder's segments, except that the first position (BOS, or the instruction's first token
# where the tokenizer adds no BOS) is its own segment: it is the usual attention sink.
SEGMENTS = ("first", "instruction", "history", "sep", "think", "pause", "rationale", "target")
PROMPTS = ("auto", *evaluate.VARIANTS)  # --variant; auto: the checkpoint's


@dataclass
class Args(ProbeArgs):
    """Attention from pause / SID positions, relevance, logit lens and pause interventions."""

    n_users: int = arg(256, "test users sampled (seeded)", min=1)
    split: str = arg("test", "test, valid or train", choices=("test", "valid", "train"))
    variant: str = arg("auto", "{choices}; auto: the checkpoint's (base -> plain)", choices=PROMPTS)
    n_pauses: int = arg(-1, "pauses (-1: the checkpoint's, 5 if none)", min=-1, max=MAX_PAUSES)
    batch_size: int = arg(8, "users per forward pass", min=1)
    n_perm: int = arg(200, "target re-pairings for the relevance baseline", min=1)
    interventions: bool = arg(False, "also decode with pauses removed / masked / replaced (slow)")
    intervention_users: int = arg(0, "users decoded (0 = n_users)", min=0)
    beams: int = arg(20, "beam width of the intervention decoding", min=1)
    n_boot: int = arg(1000, "bootstrap resamples of paired CIs", min=1)


def resolve_variant(ckpt: Checkpoint, args: Args) -> tuple[str, int]:
    variant = registry.prompt_of(ckpt.variant) if args.variant == "auto" else args.variant
    if variant not in evaluate.VARIANTS:
        raise UserError(f"unknown variant '{variant}' (known: {', '.join(PROMPTS)})")
    n_pauses = args.n_pauses if args.n_pauses >= 0 else ckpt.n_pauses or PAPER_PAUSES
    return variant, n_pauses if variant == "pause" else 0


def encode_all(
    builder: PromptBuilder, examples: list[data.Example], variant: str, n_pauses: int
) -> list[Encoded]:
    """Teacher-forced prompts with the target SID (cot: the leak-free template rationale)."""
    why = (  # noqa: E731
        lambda ex: rationales.template(builder.catalog, ex.history) if variant == "cot" else None
    )
    return [
        builder.encode(ex.history, ex.target, variant, n_pauses, rationale=why(ex))
        for ex in examples
    ]


@dataclass
class Lens:
    """What the logit lens ranks: first-level code token ids and, per user and level, the trie
    children of the target's prefix (the candidates at that step) and the target's token id."""

    level0: torch.Tensor  # (n_codes0,) token ids
    cands: list[list[torch.Tensor]]  # [user][level] candidate token ids
    target: torch.Tensor  # (n_users, n_levels) token ids


def lens_targets(builder: PromptBuilder, examples: list[data.Example]) -> Lens:
    ids = np.asarray(builder.item_ids)  # (n_items, n_levels)
    level0 = torch.tensor(np.unique(ids[:, 0]))
    cands = []
    for ex in examples:
        t = ids[ex.target]
        cands.append(
            [
                torch.tensor(np.unique(ids[(ids[:, :j] == t[:j]).all(1), j]))
                for j in range(ids.shape[1])
            ]
        )
    return Lens(level0, cands, torch.tensor(ids[[ex.target for ex in examples]]))


class Recorder:
    """Hooks that reduce each batch's patterns and residuals to what the probe keeps."""

    def __init__(self, n_layers: int, norm, w_u: torch.Tensor, lens: Lens):
        self.n_layers, self.norm, self.w_u, self.lens = n_layers, norm, w_u, lens
        self.seg_sum: dict[int, torch.Tensor] = {}  # layer -> (n_heads, n_query, n_segments)
        # (batch, nq, n_hist)
        self.hist: dict[int, list[torch.Tensor]] = {i: [] for i in range(n_layers)}
        self.ranks: dict[int, list[torch.Tensor]] = {i: [] for i in range(n_layers)}  # (batch, nq)
        # the lens tables stay on the CPU; what the hooks multiply goes to the model
        dev = w_u.device
        self.w0 = w_u[lens.level0.to(dev)]  # (n_codes0, d_model)
        self.where0 = torch.searchsorted(lens.level0, lens.target[:, 0].contiguous()).to(dev)
        self.cache: dict[tuple[int, int], tuple[torch.Tensor, int]] = {}

    def start(
        self,
        query: torch.Tensor,
        seg: torch.Tensor,
        hist: torch.Tensor,
        users: range,
        n_pauses: int,
    ):
        self.query, self.seg, self.hist_onehot, self.users, self.n_pauses = (
            query,
            seg,
            hist,
            users,
            n_pauses,
        )

    def hooks(self) -> list:
        out = []
        for layer in range(self.n_layers):
            out.append((f"blocks.{layer}.attn.hook_pattern", self._pattern(layer)))
            out.append((f"blocks.{layer}.hook_resid_post", self._resid(layer)))
        return out

    def _pattern(self, layer: int):
        def hook(pattern: torch.Tensor, hook=None):  # (batch, n_heads, pos, pos)
            b, h, _, p = pattern.shape
            rows = (
                pattern.detach().float().gather(2, self.query[:, None, :, None].expand(b, h, -1, p))
            )
            mass = rows @ self.seg[:, None]  # (batch, n_heads, nq, n_segments)
            self.seg_sum[layer] = self.seg_sum.get(layer, 0) + mass.sum(0)
            self.hist[layer].append(rows.mean(1) @ self.hist_onehot)  # (batch, nq, n_hist)

        return hook

    def _resid(self, layer: int):
        from transformer_lens.model_bridge.exceptions import StopAtLayerException

        def hook(resid: torch.Tensor, hook=None):  # (batch, pos, d_model)
            q = resid.detach().gather(1, self.query[..., None].expand(-1, -1, resid.shape[-1]))
            normed = self.norm(q).float()  # (batch, nq, d_model)
            self.ranks[layer].append(self._rank(normed))
            if layer == self.n_layers - 1:  # all recorded: skip the final norm and unembedding
                raise StopAtLayerException(resid)

        return hook

    def _rank(self, normed: torch.Tensor) -> torch.Tensor:
        """1-based rank of the target code among the candidates, per user and query (batch, nq).
        The target's logit is read from the same product as its rivals' (no rounding mismatch)."""
        lens, n_pauses, users = self.lens, self.n_pauses, list(self.users)
        logits0 = normed[:, : n_pauses + 1] @ self.w0.T  # (batch, n_pauses + 1, n_codes0)
        where0 = self.where0[users]  # (batch,)
        target0 = logits0.gather(-1, where0[:, None, None].expand(-1, n_pauses + 1, 1))
        ranks = [1 + (logits0 > target0).sum(-1)]
        for j in range(1, lens.target.shape[1]):
            col = []
            for b, u in enumerate(users):
                w, where = self._children(u, j)
                logits = w @ normed[b, n_pauses + j]
                col.append(1 + (logits > logits[where]).sum())
            ranks.append(torch.stack(col)[:, None])
        return torch.cat(ranks, 1)

    def _children(self, u: int, j: int) -> tuple[torch.Tensor, int]:
        """Unembedding rows of user ``u``'s candidates at SID step ``j`` and the target's index."""
        if (u, j) not in self.cache:
            cands = self.lens.cands[u][j]
            where = int(torch.searchsorted(cands, self.lens.target[u, j]))
            self.cache[(u, j)] = self.w_u[cands.to(self.w_u.device)], where
        return self.cache[(u, j)]


def batch_tensors(encs: list[Encoded], n_pauses: int, n_levels: int, pad: int):
    """ids (batch, pos); queries (batch, n_pauses + n_levels): pause positions, then the positions
    whose next token is SID level j; one-hot segments (batch, pos, n_segments) and history items
    (batch, pos, n_hist)."""
    ids, _ = act.pad_right([e.input_ids for e in encs], pad)
    n_hist = 1 + max(
        int(s.split(":")[1]) for e in encs for s in e.segments if s.startswith("history:")
    )
    seg = torch.zeros((*ids.shape, len(SEGMENTS)))
    hist = torch.zeros((*ids.shape, n_hist))
    query = []
    for b, e in enumerate(encs):
        for p, s in enumerate(e.segments):
            name, _, j = s.partition(":")
            seg[b, p, SEGMENTS.index("first" if p == 0 else name)] = 1.0
            if j:
                hist[b, p, int(j)] = 1.0
        pauses = [p for p, s in enumerate(e.segments) if s == "pause"]
        query.append(pauses + [e.prompt_len - 1 + j for j in range(n_levels)])
    return ids, torch.tensor(query), seg, hist


@torch.no_grad()
def record(
    ckpt: Checkpoint, encs: list[Encoded], lens: Lens, n_pauses: int, batch_size: int
) -> Recorder:
    """One bridge pass per batch; the hooks keep segment masses, history masses and lens ranks."""
    model = ckpt.model
    bridge = act.boot_bridge(model, ckpt.tokenizer, model.device)
    n_layers = model.config.num_hidden_layers
    rec = Recorder(
        n_layers, act.final_norm(model), model.get_output_embeddings().weight.detach().float(), lens
    )
    pad = ckpt.tokenizer.pad_token_id or 0
    n_levels = lens.target.shape[1]
    for start in range(0, len(encs), batch_size):
        chunk = encs[start : start + batch_size]
        ids, query, seg, hist = batch_tensors(chunk, n_pauses, n_levels, pad)
        dev = model.device
        rec.start(
            query.to(dev), seg.to(dev), hist.to(dev), range(start, start + len(chunk)), n_pauses
        )
        bridge.run_with_hooks(ids.to(dev), fwd_hooks=rec.hooks())
        log.info("attention probe: %d/%d users", start + len(chunk), len(encs))
    del bridge
    return rec


def mass_rows(rec: Recorder, n_users: int, n_pauses: int) -> list[dict]:
    rows = []
    for layer, total in rec.seg_sum.items():
        mean = (total / n_users).cpu().numpy()  # (n_heads, nq, n_segments)
        for head in range(mean.shape[0]):
            for q in range(mean.shape[1]):
                metric, pos = ("attn_mass", q) if q < n_pauses else ("attn_mass_sid", q - n_pauses)
                rows += [
                    {
                        "metric": metric,
                        "layer": layer,
                        "head": head,
                        "pos": pos,
                        "segment": s,
                        "value": float(mean[head, q, i]),
                    }
                    for i, s in enumerate(SEGMENTS)
                ]
        if n_pauses >= 2:
            for name, sel in (
                ("attn_mass_early", slice(0, n_pauses // 2)),
                ("attn_mass_late", slice(n_pauses - n_pauses // 2, n_pauses)),
            ):
                part = mean[:, sel].mean((0, 1))
                rows += [
                    {"metric": name, "layer": layer, "segment": s, "value": float(part[i])}
                    for i, s in enumerate(SEGMENTS)
                ]
    return rows


def lens_rows(rec: Recorder, examples: list[data.Example], n_pauses: int) -> list[dict]:
    ranks = (
        torch.stack([torch.cat(rec.ranks[layer]) for layer in range(rec.n_layers)]).cpu().numpy()
    )
    ranks = ranks.astype(float)  # (n_layers, n_users, nq)
    rows = []
    users = [ex.user for ex in examples]
    for layer in range(ranks.shape[0]):
        for pos in range(n_pauses):
            for u, r in zip(users, ranks[layer, :, pos]):
                rows += [
                    {"metric": "lens_rank", "layer": layer, "pos": pos, "user_id": u, "value": r},
                    {
                        "metric": "lens_top1",
                        "layer": layer,
                        "pos": pos,
                        "user_id": u,
                        "value": float(r == 1),
                    },
                ]
        for level in range(ranks.shape[2] - n_pauses):
            r = ranks[layer, :, n_pauses + level]
            rows += [
                {"metric": "lens_rank_sid", "layer": layer, "pos": level, "value": float(r.mean())},
                {
                    "metric": "lens_top1_sid",
                    "layer": layer,
                    "pos": level,
                    "value": float((r == 1).mean()),
                },
            ]
    top1 = ranks == 1  # (n_layers, n_users, nq)
    for pos in range(n_pauses):
        hit = top1[:, :, pos]
        reached = hit.any(0)
        first = hit.argmax(0)[reached]
        rate = hit.mean(1)
        rows += [
            {"metric": "lens_reach", "pos": pos, "value": float(reached.mean())},
            {
                "metric": "lens_first_top1_layer",
                "pos": pos,
                "value": float(first.mean()) if len(first) else float("nan"),
            },
            {"metric": "lens_best_layer", "pos": pos, "value": float(rate.argmax())},
            {"metric": "lens_best_top1", "pos": pos, "value": float(rate.max())},
        ]
    rows.append({"metric": "lens_chance_top1", "value": 1.0 / len(rec.lens.level0)})
    return rows


def compute(
    ckpt: Checkpoint, args: Args, examples: list[data.Example] | None = None
) -> pd.DataFrame:
    """All attention-probe measurements of one checkpoint (``examples``: default, a seeded sample
    of ``args.n_users`` users of ``args.split``)."""
    variant, n_pauses = resolve_variant(ckpt, args)
    if examples is None:
        examples = evaluate.examples_for(ckpt, args.split, args.n_users, args.seed)
    if not examples:
        raise UserError("the attention probe needs at least one user")
    builder = PromptBuilder.for_checkpoint(ckpt)
    encs = encode_all(builder, examples, variant, n_pauses)
    lens = lens_targets(builder, examples)
    rec = record(ckpt, encs, lens, n_pauses, args.batch_size)
    rows = mass_rows(rec, len(examples), n_pauses) + lens_rows(rec, examples, n_pauses)
    rows += relevance_rows(rec.hist, examples, ckpt.catalog, n_pauses, args.n_perm, args.seed)
    if args.interventions:
        n = min(args.intervention_users or len(examples), len(examples))
        pick = data.sample(len(examples), n, args.seed)
        rows += interventions.run(
            ckpt,
            builder,
            [examples[i] for i in pick],
            variant,
            n_pauses,
            args.beams,
            args.batch_size,
            args.n_boot,
            args.seed,
        )
    df = pd.DataFrame(rows)
    for key, value in reversed(label(ckpt).items()):
        df.insert(0, key, value)
    df["prompt"], df["prompt_pauses"] = variant, n_pauses
    return df


run, main = entry(Args, compute, "attention", attn_implementation="eager")


if __name__ == "__main__":
    cli(main)
