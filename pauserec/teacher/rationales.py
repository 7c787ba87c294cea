"""Rationales for the explicit chain-of-thought baseline (``cot-sft``).

Sources:
* ``template``: history-only and leak-free -- summarises the categories of the user's recent items.
* ``template-leaky``: OneRec-Think style -- also names the target's category, so it leaks the answer
  (flagged ``leaky=True`` and recorded in checkpoint metadata).
* ``local`` / ``local-leaky``: the checkpoint's own backbone writes the rationale (greedy, via
  :func:`pauserec.decode.generate`) from a prompt listing the history titles (and, leaky, the
  target).
* ``openai`` / ``openai-leaky``: the same prompt sent to an OpenAI-compatible endpoint
  (:func:`pauserec.llm.complete`, temperature 0).

Both model sources cache every rationale in an append-only JSONL file as soon as it is written, so
``python -m pauserec rationales ...`` resumes where an interrupted run stopped.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

from pauserec import files, tokens
from pauserec.config import arg, parse_args
from pauserec.data import Example
from pauserec.errors import UserError
from pauserec.model import checkpoint, prompts
from pauserec.model.catalog import Catalog
from pauserec.model.device import DEVICES_HELP, resolve_device
from pauserec.model.prompts import chat_ids
from pauserec.teacher import llm

log = logging.getLogger(__name__)
SOURCES = ("template", "template-leaky", "local", "local-leaky", "openai", "openai-leaky")
MAX_TITLES = 10  # most recent history items shown to a language model
SYSTEM = (
    "You explain the reasoning of a recommender system. Reply with one or two short sentences "
    "about what the user is likely to want next and why. Do not list items."
)


@dataclass(frozen=True)
class Rationale:
    text: str
    leaky: bool  # True when the text was written knowing the target
    source: str = ""


def _leaf(categories: str) -> str:
    parts = [p.strip() for p in categories.split(",") if p.strip()]
    return parts[-1] if parts else ""


def template(catalog: Catalog, history) -> str:
    """A leak-free rationale from the history alone."""
    recent = [catalog.items[i] for i in history[-5:]]
    cats = Counter(c for it in recent if (c := _leaf(it.categories)))
    top = ", ".join(c for c, _ in cats.most_common(2)) or prompts.NO_CATEGORY
    return prompts.RATIONALE.format(top=top, latest=recent[-1].display_title)


def template_leaky(catalog: Catalog, history, target: int) -> str:
    """Like :func:`template`, then names the target's category (leaks the answer)."""
    leaf = _leaf(catalog.items[target].categories) or prompts.NO_LEAF
    return template(catalog, history) + prompts.RATIONALE_LEAK.format(leaf=leaf)


def _describe(catalog: Catalog, index: int) -> str:
    item = catalog.items[index]
    leaf = _leaf(item.categories)
    return f"{item.display_title} ({leaf})" if leaf else item.display_title


def llm_prompt(catalog: Catalog, history, target: int | None = None) -> str:
    """The language-model prompt: the recent history's titles; the target only when given
    (leaky)."""
    lines = "\n".join(f"- {_describe(catalog, i)}" for i in history[-MAX_TITLES:])
    text = f"A user interacted with these items, oldest first:\n{lines}\n"
    if target is None:
        return (
            text + "In one or two sentences, reason about what kind of item this user wants next."
        )
    return (
        text + f"The item they chose next was: {_describe(catalog, target)}.\n"
        "In one or two sentences, explain why this user wanted that item next."
    )


def clean(text: str) -> str:
    """One line of plain text: whitespace collapsed, workbench tokens (SIDs, pause, think)
    removed -- a ``</think>`` written by a language model would otherwise end the think block
    early."""
    pieces = re.split(r"(<[^<>\s]+>)", text)
    specials = {tokens.PAUSE, *tokens.THINK_TOKENS}
    return " ".join(
        "".join(p for p in pieces if p not in specials and not tokens.is_sid_token(p)).split()
    )


def _prompts(catalog: Catalog, examples: list[Example], leaky: bool) -> list[str]:
    return [llm_prompt(catalog, ex.history, ex.target if leaky else None) for ex in examples]


def via_openai(
    catalog: Catalog,
    examples: list[Example],
    leaky: bool,
    cache_path: str | Path | None,
    **llm_options,
) -> list[str]:
    """Rationales from an OpenAI-compatible endpoint; ``llm_options`` go to :func:`llm.complete`."""
    texts = llm.complete(
        _prompts(catalog, examples, leaky),
        system=SYSTEM,
        cache_path=cache_path,
        check=_empty_after_cleaning,
        **llm_options,
    )
    return [clean(t) for t in texts]


def _empty_after_cleaning(text: str) -> str | None:
    """A reply made only of workbench tokens (or whitespace) is no rationale: retried, never
    cached."""
    return None if clean(text) else f"empty after removing workbench tokens ({text[:60]!r})"


def _model_key(ckpt) -> str:
    """What identifies the model that writes local rationales: its checkpoint's fingerprint (or, for
    a checkpoint never saved, a hash of its weights)."""
    if ckpt.path is not None:
        return "ckpt:" + checkpoint.fingerprint(ckpt.path)
    digest = hashlib.sha256()
    for t in ckpt.model.state_dict().values():
        digest.update(t.detach().float().cpu().contiguous().view(-1).numpy().tobytes())
    return "weights:" + digest.hexdigest()


def via_local(
    ckpt,
    examples: list[Example],
    leaky: bool,
    cache_path: str | Path | None,
    max_new_tokens: int = 48,
    batch_size: int = 16,
) -> list[str]:
    """Rationales written greedily by the checkpoint's own model; cached after every batch."""
    from pauserec import decoding  # torch-heavy; only this source needs it

    tok = ckpt.tokenizer
    prompts = _prompts(ckpt.catalog, examples, leaky)
    fp = _model_key(ckpt)
    keys = [llm.cache_key("local", fp, p, max_new_tokens) for p in prompts]
    stop = [
        i
        for i in (tok.eos_token_id, tok.convert_tokens_to_ids(tokens.THINK_CLOSE))
        if i is not None
    ]
    with llm.ResponseCache(cache_path) as cache:
        todo, seen = [], set()  # first index of each uncached prompt
        for i, k in enumerate(keys):
            if k not in cache and k not in seen:
                seen.add(k)
                todo.append(i)
        log.info("local rationales: %d cached, %d to generate", len(prompts) - len(todo), len(todo))
        for start in range(0, len(todo), batch_size):
            batch = todo[start : start + batch_size]
            out = decoding.generate(
                ckpt.model,
                tok,
                [chat_ids(tok, prompts[i], SYSTEM) for i in batch],
                max_new_tokens=max_new_tokens,
                stop_ids=stop,
                batch_size=batch_size,
            )
            for i, new in zip(batch, out):
                cache.put(
                    keys[i],
                    clean(tok.decode(new, skip_special_tokens=True)),
                    model=fp,
                    prompt=prompts[i],
                )
        texts = [cache.get(k) or "" for k in keys]
    if empty := sum(not t for t in texts):
        log.warning("local rationales: %d of %d are empty after cleaning", empty, len(texts))
    return texts


def build(source: str, catalog: Catalog, examples: list[Example], **options) -> list[Rationale]:
    """One rationale per example from ``source``.

    ``local*`` needs ``ckpt=`` (a :class:`~pauserec.checkpoint.Checkpoint`); ``openai*`` takes the
    options of :func:`llm.complete`. Both take ``cache_path=``.
    """
    leaky = source.endswith("-leaky")
    if source == "template":
        texts = [template(catalog, ex.history) for ex in examples]
    elif source == "template-leaky":
        texts = [template_leaky(catalog, ex.history, ex.target) for ex in examples]
    elif source in ("local", "local-leaky"):
        texts = via_local(
            options.pop("ckpt"), examples, leaky, options.pop("cache_path", None), **options
        )
    elif source in ("openai", "openai-leaky"):
        texts = via_openai(catalog, examples, leaky, options.pop("cache_path", None), **options)
    else:
        raise UserError(f"unknown rationale source '{source}' (known: {', '.join(SOURCES)})")
    return [Rationale(t, leaky, source) for t in texts]


@dataclass
class Args:
    """Generate one CoT rationale per example of a checkpoint's dataset split, and cache them.

    Every rationale is cached the moment it is written (``--cache``, default OUT.cache.jsonl); rerun
    the same command to resume an interrupted run.
    """

    ckpt: str | None = arg(None, "checkpoint directory (catalog, dataset)")
    out: str | None = arg(None, "output JSONL, one rationale per example")
    overwrite: bool = arg(False, "replace an existing --out")
    source: str = arg("openai", ", ".join(SOURCES), choices=SOURCES)
    split: str = arg("train", "train, valid or test", choices=("train", "valid", "test"))
    n: int | None = arg(None, "a seeded sample of N examples (default all)", min=1)
    seed: int = arg(0, "seed of the --n sample", min=0)
    cache: str | None = arg(None, "response cache (default OUT.cache.jsonl)")
    base_url: str | None = arg(None, f"else ${llm.ENV_BASE_URL}")
    model: str | None = arg(None, f"else ${llm.ENV_MODEL}")
    max_tokens: int = arg(96, "longest rationale, in tokens", min=1)
    timeout: float = arg(60.0, "total seconds per request", gt=0.0)
    max_retries: int = arg(5, "retries per request", min=0)
    concurrency: int = arg(1, "requests in flight", min=1, max=256)
    batch_size: int = arg(16, "local: prompts per generate() batch", min=1)
    device: str = arg("auto", "local: " + DEVICES_HELP)


def main(argv: list[str] | None = None) -> list[Rationale]:
    return run(parse_args(Args, argv, "pauserec rationales"))


def run(args: Args) -> list[Rationale]:
    """Write one rationale per example of a checkpoint's split (see :class:`Args`)."""
    if not args.ckpt or not args.out:
        raise UserError("pauserec rationales: --ckpt and --out are required")
    for flag, path in (("--out", args.out), ("--cache", args.cache)):
        if path and Path(path).is_dir():
            raise UserError(f"{flag} {path} is a directory; name a .jsonl file")
    meta = checkpoint.read_meta(args.ckpt)
    inputs = checkpoint.source_paths(args.ckpt)
    claim = files.claim(
        args.out, kind="pauserec rationales", overwrite=args.overwrite, inputs=inputs, file=True
    )
    with claim:
        return _write_all(args, meta)


def _write_all(args: Args, meta: dict) -> list[Rationale]:
    from pauserec import data

    ds_meta = meta.get("dataset") or {}
    if not ds_meta.get("name"):
        raise UserError(f"checkpoint {args.ckpt} does not record its dataset")
    pool = data.split(
        data.load_dataset(ds_meta["name"], ds_meta.get("data_root")), ds_meta.get("max_history", 20)
    )[args.split]
    examples = [pool[i] for i in data.sample(len(pool), args.n, args.seed)]
    cache = args.cache or str(Path(args.out).with_suffix(".cache.jsonl"))
    options: dict = {}
    if args.source.startswith("local"):
        ckpt = checkpoint.load(args.ckpt, device=resolve_device(args.device))
        catalog = ckpt.catalog
        options = {
            "ckpt": ckpt,
            "cache_path": cache,
            "max_new_tokens": args.max_tokens,
            "batch_size": args.batch_size,
        }
    else:
        catalog = Catalog.read(Path(args.ckpt) / checkpoint.CATALOG_FILE)
        if args.source.startswith("openai"):
            options = {
                "cache_path": cache,
                "base_url": args.base_url,
                "model": args.model,
                "max_tokens": args.max_tokens,
                "timeout": args.timeout,
                "max_retries": args.max_retries,
                "concurrency": args.concurrency,
            }
    rationales = build(args.source, catalog, examples, **options)
    write(args.out, examples, rationales)
    print(f"wrote {len(rationales):,} {args.source} rationales ({args.split}) to {args.out}")
    return rationales


def write(path: str | Path, examples: list[Example], rationales: list[Rationale]) -> None:
    """One JSON line per example: user, history, target, text, leaky, source (written
    atomically)."""
    rows = [
        json.dumps(
            {"user": ex.user, "history": list(ex.history), "target": ex.target, **asdict(r)},
            ensure_ascii=False,
        )
        for ex, r in zip(examples, rationales)
    ]
    files.write_text(path, "".join(row + "\n" for row in rows))


def read(path: str | Path) -> dict[Example, Rationale]:
    """The rationales a :func:`write` file holds, keyed by example."""
    out = {}
    with open(path, encoding="utf-8") as fh:
        for n, line in enumerate(fh, 1):
            try:
                row = json.loads(line)
                ex = Example(row["user"], tuple(row["history"]), row["target"])
                out[ex] = Rationale(row["text"], row["leaky"], row.get("source", ""))
            except (json.JSONDecodeError, KeyError, TypeError, RecursionError) as err:
                why = err or "nested too deeply"
                raise UserError(f"corrupt rationale file {path} line {n}: {why}") from None
    return out
