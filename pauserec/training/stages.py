"""What each training stage does to its checkpoint before the shared loop runs, and what it trains
on.

* ``cpt`` -- SID grounding on the item corpus in both directions; loss on the answer part.
* ``sft`` -- next-item SFT with the ``plain`` prompt; loss on the target SID only.
* ``pause-pretrain`` -- from the CPT checkpoint: re-initialise ``<pause>`` at the mean of all text +
  SID rows (noise variance 1e-9 x word-embedding variance), insert pauses into ~``pause_ratio`` of
  the CPT corpus and train ONLY the pause row (every other weight, other rows included, stays
  bit-identical).
* ``pause-sft`` -- from the SFT checkpoint: set the pause row (``pretrained`` copies it from the
  pause-pretrain checkpoint, or mean-text / mean-sid / default), then fine-tune with ``<think>`` +
  ``n_pauses`` pauses + ``</think>`` before the target; loss on the SID only. Its compute-matched
  controls use exactly this recipe with another prompt (:data:`pauserec.registry.CONTROLS`).
* ``cot-sft`` -- from the SFT checkpoint: ``<think>`` rationale ``</think>`` then the target; loss
  on rationale and SID. The rationale source is one of :mod:`pauserec.rationales`.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch

from pauserec import data, registry, tokens
from pauserec.errors import UserError
from pauserec.model import backbone, checkpoint
from pauserec.model.checkpoint import Checkpoint
from pauserec.model.prompts import PromptBuilder, format_of
from pauserec.teacher import rationales
from pauserec.training import corpus

log = logging.getLogger(__name__)


def filler_token(tok) -> str:
    """The token string of :data:`registry.FILLER_TEXT` (its first piece, for tokenizers that split
    it)."""
    ids = tok.encode(registry.FILLER_TEXT, add_special_tokens=False)
    if not ids:
        raise UserError(f"the tokenizer has no token for the filler text {registry.FILLER_TEXT!r}")
    return tok.convert_ids_to_tokens(ids[0])


def freeze_all_but(model, rows: list[int]) -> dict[str, torch.Tensor]:
    """Freeze every parameter except the embedding matrices, whose other rows get a zero-gradient
    mask."""
    for p in model.parameters():
        p.requires_grad_(False)
    names = {id(p): n for n, p in model.named_parameters()}
    masks = {}
    for weight in backbone.embedding_matrices(model).values():
        weight.requires_grad_(True)
        mask = torch.zeros(weight.shape[0], dtype=torch.bool)
        mask[rows] = True
        masks[names[id(weight)]] = mask
    return masks


@torch.no_grad()
def init_pause(
    ckpt: Checkpoint, how: str, pause_from: str = "", seed: int = 0
) -> Checkpoint | None:
    """Set the pause row(s): copied from a pause-pretrain checkpoint (returned, for its lineage), or
    by a backbone init strategy."""
    pid = ckpt.tokenizer.convert_tokens_to_ids(tokens.PAUSE)
    if how != "pretrained":
        backbone.init_rows(ckpt.model, ckpt.tokenizer, [pid], how, seed)
        return None
    if not pause_from:
        raise UserError("--pause-init pretrained needs --pause-from PAUSE_PRETRAIN_CKPT")
    src = checkpoint.load(pause_from)
    if src.stage != "pause-pretrain":
        log.warning("--pause-from %s is stage '%s', not pause-pretrain", pause_from, src.stage)
    dst, srcw = backbone.embedding_matrices(ckpt.model), backbone.embedding_matrices(src.model)
    same = (
        src.tokenizer.convert_tokens_to_ids(tokens.PAUSE) == pid
        and dst.keys() == srcw.keys()
        and all(dst[k].shape == srcw[k].shape for k in dst)
    )
    if not same:
        raise UserError(
            f"--pause-from {pause_from}: its vocabulary or embedding size differs from --from"
        )
    for key, weight in dst.items():
        weight[pid] = srcw[key][pid].to(weight.device, weight.dtype)
    return src


@torch.no_grad()
def reseed(ckpt: Checkpoint, seed: int) -> None:
    """What an init checkpoint drew at random, drawn again from the training seed, so that
    randomness is part of the seeds' spread (the init checkpoint, with its SIDs, is shared by every
    seed): the new token rows (by the init's strategy) and, for a backbone trained from scratch,
    every weight."""
    strategy = ((ckpt.meta.get("configs") or {}).get("init") or {}).get("init") or "mean-all"
    # Llama init: N(0, std), norms 1
    if not backbone.language_model(str(ckpt.meta.get("backbone"))):
        gen = torch.Generator().manual_seed(seed)
        std = ckpt.model.config.initializer_range
        for p in ckpt.model.parameters():
            p.copy_(
                torch.randn(p.shape, generator=gen, dtype=torch.float32) * std
                if p.ndim > 1
                else 1.0
            )
    ids = ckpt.tokenizer.convert_tokens_to_ids(tokens.special_tokens(ckpt.catalog.codebook_sizes))
    backbone.init_rows(ckpt.model, ckpt.tokenizer, ids, strategy, seed)
    log.info("drew the init checkpoint's random parts again from training seed %d", seed)


def prepare(ckpt: Checkpoint, args) -> tuple[dict[str, torch.Tensor], Checkpoint | None]:
    """Stage-specific model surgery: (row masks of row-only training, the pause-pretrain source).
    The stage that follows init in the stage graph (cpt) first redraws the init's random parts from
    the training seed."""
    expected = registry.PARENT[args.stage]
    if expected != "init" and ckpt.stage != expected:
        log.warning(
            "stage %s expects a %s checkpoint; --from is stage '%s'",
            args.stage,
            expected,
            ckpt.stage,
        )
    if expected == "init" and ckpt.stage == "init":
        reseed(ckpt, args.seed)
    pid = ckpt.tokenizer.convert_tokens_to_ids(tokens.PAUSE)
    if args.stage == "pause-pretrain":
        backbone.init_rows(ckpt.model, ckpt.tokenizer, [pid], "mean-all", args.seed)
        return freeze_all_but(ckpt.model, [pid]), None
    if args.stage == "pause-sft" and args.control == "":
        return {}, init_pause(ckpt, args.pause_init, args.pause_from, args.seed)
    return {}, None


def training_windows(ckpt: Checkpoint, args) -> tuple[list[data.Window], int]:
    """A next-item stage's seeded sample of ``args.n_train`` training windows, and how many there
    were."""
    history = args.max_history or ckpt.meta["dataset"].get("max_history", 20)
    every = data.windows(checkpoint.dataset_of(ckpt), history, args.train_targets)
    return [every[i] for i in data.sample(len(every), args.n_train, args.seed)], len(every)


def build_corpus(ckpt: Checkpoint, args) -> tuple[corpus.Corpus, list, list]:
    """The stage's training sequences, plus (examples, rationales) for cot-sft."""
    ds = checkpoint.dataset_of(ckpt)
    tok = ckpt.tokenizer
    if args.stage in registry.GROUNDING:
        c = corpus.subset(
            corpus.grounding(tok, ckpt.catalog, ds.items, args.desc_words), args.n_train, args.seed
        )
        if args.stage == "pause-pretrain":
            c = corpus.with_pauses(
                c, tok.convert_tokens_to_ids(tokens.PAUSE), args.pause_ratio, args.seed
            )
        return c, [], []
    chosen, available = training_windows(ckpt, args)
    examples = [ex for w in chosen for ex in w.examples()]
    filler = filler_token(tok) if args.control == "filler" else None
    builder = PromptBuilder(tok, ckpt.catalog, pause_token=filler, format=format_of(args.layout))
    rats = _rationales(ckpt, args, examples) if args.stage == "cot-sft" else []
    n_pauses = 0 if args.control == "think-only" else args.n_pauses
    c = corpus.recommendation(
        builder,
        chosen,
        registry.variant_of(args.stage, args.control),
        args.layout,
        n_pauses,
        [r.text for r in rats] if rats else None,
        args.rationale_loss,
    )
    c.info.update(available=available, used=len(chosen), train_targets=args.train_targets)
    return c, examples, rats


def _rationales(ckpt: Checkpoint, args, examples: list) -> list[rationales.Rationale]:
    if args.rationale_file:
        known = rationales.read(args.rationale_file)
        missing = sum(ex not in known for ex in examples)
        if missing:
            raise UserError(
                f"{missing} of {len(examples)} training examples have no rationale in "
                f"{args.rationale_file} (write them with `python -m pauserec rationales`)"
            )
        return [known[ex] for ex in examples]
    kind = args.rationale.split("-")[0]  # template, local or openai
    if kind in ("local", "openai") and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise UserError(
            "under torchrun, write model rationales first (`python -m pauserec rationales`) "
            "and pass --rationale-file"
        )
    cache = str(Path(args.out).with_name(Path(args.out).name + ".rationales.jsonl"))
    options: dict = {}
    if kind == "local":
        options = {"ckpt": ckpt, "cache_path": cache, "max_new_tokens": args.rationale_max_tokens}
    elif kind == "openai":
        endpoint = {"base_url": args.llm_base_url, "model": args.llm_model}
        options = {"cache_path": cache, **endpoint, "max_tokens": args.rationale_max_tokens}
    return rationales.build(args.rationale, ckpt.catalog, examples, **options)
