"""How much does the rationale move the prediction? Teacher-forced, perturbed rationales on a CoT
checkpoint.

For a seeded sample of users, the clean rationale (:func:`pauserec.rationales.build` with the source
the checkpoint recorded, else ``template``; ``--rationale-source`` overrides) and each perturbation
of it (:mod:`probes.perturb`: word dropout, word/sentence shuffle, paraphrase, swap, empty, filler,
oracle) are teacher-forced inside ``<think> ... </think>``, and the next SID is decoded by
trie-constrained beam search (:func:`pauserec.decode.recommend`). Per user and perturbation:

* ``recall@K``, ``ndcg@K`` (also for ``clean``) and ``delta_recall@K`` / ``delta_ndcg@K`` =
  perturbed - clean (K = ``--top-k``, default 10);
* ``kl``: KL(clean || perturbed) of the *first-level SID code* distribution at the answer
  position -- the next-token softmax restricted to the level-0 codes that some catalog item starts
  with, and renormalised over them (exact, one forward pass);
* ``kl_items`` (``--kl-items``): KL(clean || perturbed) over the *union of both top-K item lists*,
  each item's full-SID log-probability (:func:`pauserec.decode.score_continuations`) renormalised
  over that union -- how the ranking of the likely items moves;
* ``quality_length`` / ``quality_leakage`` / ``quality_agreement`` of the rationale (also
  ``clean``).

``oracle`` names the target: an upper bound, not a degradation (``upper_bound=True`` on its rows).
Columns: ``ckpt, stage, variant, perturbation, upper_bound, rationale_source, user_id, item_id,
metric, value, rationale`` (the text that was teacher-forced).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from pauserec import decoding
from pauserec.config import arg
from pauserec.data import Example
from pauserec.errors import UserError
from pauserec.evaluation import metrics
from pauserec.evaluation.evaluate import examples_for
from pauserec.model import checkpoint
from pauserec.model.checkpoint import Checkpoint
from pauserec.model.prompts import PromptBuilder
from pauserec.teacher import llm, rationales
from pauserec.teacher.rationales import SOURCES
from probes import perturb
from probes._common import LLMProbeArgs, cli, entry, label, llm_cache_path
from probes.perturb import PERTURBATIONS
from probes.qa import Asker, generate_answers

log = logging.getLogger(__name__)
PARAPHRASE = (
    "Rewrite the following text in other words, keeping its meaning. Reply with the rewritten "
    "text only.\n\nText: {text}"
)


@dataclass
class Args(LLMProbeArgs):
    """Perturb the teacher-forced rationale of a CoT checkpoint; measure Recall/NDCG change and
    KL."""

    n_users: int = arg(64, "users of the split (seeded sample)", min=1)
    split: str = arg("test", "train, valid or test", choices=("train", "valid", "test"))
    perturbations: tuple[str, ...] = arg(PERTURBATIONS, f"{', '.join(PERTURBATIONS)} (any dropNN)")
    rationale_source: str = arg(
        "",
        "clean rationales: {choices} (default: the checkpoint's, else template)",
        choices=("", *SOURCES),
    )
    paraphrase: str = arg("local", "local (a checkpoint) or openai", choices=("local", "openai"))
    paraphrase_ckpt: str = arg("", "local paraphraser (default: the probed checkpoint)")
    paraphrase_tokens: int = arg(64, "longest paraphrase, in tokens", min=1)
    top_k: int = arg(10, "K of recall@K / ndcg@K and of the kl_items union", min=1)
    beams: int = arg(20, "beam width", min=1)
    batch_size: int = arg(16, "users per decoding batch", min=1)
    kl_items: bool = arg(True, "also KL over the union of top-K items")


def clean_rationales(
    ckpt: Checkpoint, examples: list[Example], args: Args
) -> tuple[list[str], str]:
    """The unperturbed rationales and their source name."""
    recorded = ckpt.meta.get("rationale") or {}
    source = (
        args.rationale_source
        or (recorded.get("source") if isinstance(recorded, dict) else "")
        or ""
    )
    # "template+drop50" (probes.rationale_train): its clean base source
    source = source.split("+")[0]
    if source.startswith("openai") and not (args.llm_model or os.environ.get(llm.ENV_MODEL)):
        log.warning("rationale source %s needs --llm-model; falling back to template", source)
        source = ""
    source = source or "template"
    options: dict = {}
    if source.startswith("local"):
        options = {"ckpt": ckpt, "cache_path": llm_cache_path(args)}
    elif source.startswith("openai"):
        options = {**args.llm_options(), "max_tokens": 96}
    built = rationales.build(source, ckpt.catalog, examples, **options)
    return [r.text for r in built], source


def paraphrase(texts: list[str], ckpt: Checkpoint, args: Args) -> list[str]:
    """Each text rewritten by a language model (``--paraphrase local|openai``); ``""`` stays
    ``""``."""
    todo = [i for i, t in enumerate(texts) if t.strip()]
    prompts = [PARAPHRASE.format(text=texts[i]) for i in todo]
    if args.paraphrase == "openai":
        made = llm.complete(prompts, max_tokens=args.paraphrase_tokens, **args.llm_options())
    elif args.paraphrase == "local":
        other = checkpoint.load(args.paraphrase_ckpt, args.device) if args.paraphrase_ckpt else ckpt
        asker = Asker(other.tokenizer, other.catalog, "auto")
        made = generate_answers(
            other.model,
            asker,
            [asker.wrap(p) for p in prompts],
            args.paraphrase_tokens,
            args.batch_size,
        )
    else:
        raise UserError(f"unknown paraphraser '{args.paraphrase}' (known: local, openai)")
    out = list(texts)
    for i, text in zip(todo, made):
        out[i] = rationales.clean(text)
    if empty := sum(not out[i] for i in todo):
        log.warning("paraphrase: %d of %d paraphrases are empty", empty, len(todo))
    return out


def level0_logprobs(
    model, builder: PromptBuilder, prompts: list[list[int]], batch_size: int
) -> np.ndarray:
    """(n, C0) log-probabilities of the first SID token over the catalog's level-0 codes,
    renormalised."""
    codes = torch.tensor(sorted({ids[0] for ids in builder.item_ids}))
    out = []
    for start in range(0, len(prompts), batch_size):
        logits, _, _ = decoding.prefill(model, prompts[start : start + batch_size])  # (B, V)
        out.append(torch.log_softmax(logits[:, codes.to(logits.device)], -1).cpu().numpy())
    return np.concatenate(out)


def kl_rows(p_log: np.ndarray, q_log: np.ndarray) -> np.ndarray:
    """KL(P || Q) per row of log-probabilities (natural log), clipped at 0 against rounding."""
    return np.maximum((np.exp(p_log) * (p_log - q_log)).sum(-1), 0.0)


def items_kl(
    model, builder: PromptBuilder, prompts: dict[str, list[list[int]]], items: dict[str, np.ndarray]
) -> dict[str, np.ndarray]:
    """KL(clean || perturbed) per user and perturbation over the union of both top-K item lists.

    An item's score is its full SID's summed log-probability, so the clean prompt is scored once per
    user over every item any condition returned, and each union is renormalised from those scores.
    """
    others = [name for name in prompts if name != "clean"]
    out = {name: np.zeros(len(prompts["clean"])) for name in others}
    for u in range(len(prompts["clean"])):
        every = sorted({int(i) for name in prompts for i in items[name][u] if i >= 0})
        col = {item: j for j, item in enumerate(every)}
        (clean,) = decoding.score_continuations(
            model, [prompts["clean"][u]], [[list(builder.item_ids[i]) for i in every]]
        )
        for name in others:
            union = sorted({int(i) for i in (*items["clean"][u], *items[name][u]) if i >= 0})
            (pert,) = decoding.score_continuations(
                model, [prompts[name][u]], [[list(builder.item_ids[i]) for i in union]]
            )
            sc = clean[[col[i] for i in union]]
            lc, lp = sc - np.logaddexp.reduce(sc), pert - np.logaddexp.reduce(pert)
            out[name][u] = kl_rows(lc[None], lp[None])[0]
    return out


def conditions(
    ckpt: Checkpoint, examples: list[Example], clean: list[str], args: Args
) -> dict[str, list[str]]:
    """``clean`` and every requested perturbation of it (each seeded by its name)."""
    perturb.check(args.perturbations)
    paraphrases = paraphrase(clean, ckpt, args) if "paraphrase" in args.perturbations else None
    out = {"clean": clean}
    for name in args.perturbations:
        rng = np.random.default_rng([args.seed, *name.encode()])
        out[name] = perturb.apply(name, clean, examples, ckpt.catalog, rng, paraphrases)
    return out


def compute(ckpt: Checkpoint, args: Args) -> pd.DataFrame:
    """Rows of one checkpoint (see the module docstring)."""
    if ckpt.variant != "cot":
        log.warning(
            "%s is a %s checkpoint, not cot: its rationales were never trained",
            ckpt.path,
            ckpt.variant,
        )
    examples = examples_for(ckpt, args.split, args.n_users, args.seed)
    clean, source = clean_rationales(ckpt, examples, args)
    texts = conditions(ckpt, examples, clean, args)
    builder, k = PromptBuilder.for_checkpoint(ckpt), args.top_k
    histories, targets = [ex.history for ex in examples], [ex.target for ex in examples]
    base = {**label(ckpt), "rationale_source": source}
    ids = {
        "user_id": [ex.user for ex in examples],
        "item_id": [ckpt.catalog.items[ex.target].item_id for ex in examples],
    }
    vals, prompts, items, level0 = {}, {}, {}, {}
    for name, rats in texts.items():
        recs = decoding.recommend(
            ckpt.model,
            builder,
            histories,
            variant="cot",
            rationales=rats,
            top_k=k,
            beams=args.beams,
            batch_size=args.batch_size,
        )
        prompts[name] = [
            e.input_ids[: e.prompt_len]
            for e in decoding.build_prompts(ckpt.model, builder, histories, "cot", rationales=rats)[
                0
            ]
        ]
        items[name], r = recs.items, metrics.ranks(targets, recs.items)
        vals[name] = {
            f"recall@{k}": metrics.recall_at_k(r, k),
            f"ndcg@{k}": metrics.ndcg_at_k(r, k),
        }
        level0[name] = level0_logprobs(ckpt.model, builder, prompts[name], args.batch_size)
        q = [perturb.quality(t, ex, ckpt.catalog) for t, ex in zip(rats, examples)]
        vals[name] |= {
            f"quality_{m}": np.array([x[m] for x in q]) for m in ("length", "leakage", "agreement")
        }
        if name != "clean":
            vals[name] |= {
                f"delta_{m}": vals[name][m] - vals["clean"][m] for m in (f"recall@{k}", f"ndcg@{k}")
            }
            vals[name]["kl"] = kl_rows(level0["clean"], level0[name])
        log.info(
            "%s %-16s recall@%d %.3f  kl %.4f",
            base["ckpt"],
            name,
            k,
            vals[name][f"recall@{k}"].mean(),
            float(np.mean(vals[name].get("kl", 0.0))),
        )
    if args.kl_items and len(texts) > 1:
        for name, v in items_kl(ckpt.model, builder, prompts, items).items():
            vals[name]["kl_items"] = v
    frames = [
        pd.DataFrame(
            {
                **base,
                "perturbation": name,
                "upper_bound": name in perturb.UPPER_BOUND,
                **ids,
                "metric": metric,
                "value": np.asarray(v, dtype=float),
                "rationale": texts[name],
            }
        )
        for name, per in vals.items()
        for metric, v in per.items()
    ]
    return pd.concat(frames, ignore_index=True)


run, main = entry(Args, compute, "rationale", check=lambda args: perturb.check(args.perturbations))


if __name__ == "__main__":
    cli(main)
