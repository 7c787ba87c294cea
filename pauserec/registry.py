"""The experiment's stage graph and its cells, written once.

Training (:mod:`pauserec.training`), the pipeline, the experiment, the GPU run, rationale-train and
the claims all read these facts here; nothing else spells a parent stage, a cell name or a control.

* A **stage** is a kind of training step: its source stage (:data:`PARENT`), its prompt family
  (:data:`VARIANT`) and whether it trains on the item corpus (:data:`GROUNDING`).
* A **cell** is one trained condition of the experiment: a stage with its settings (:class:`Cell`).
  Its name (``sft``, ``pause-k5``, ``pause-k5-mean-text``, ``think-only``, ``sft-continued``,
  ``filler-k5``, ``cot-template``) is derived from the settings and written into every checkpoint
  and result row beside the settings themselves (``variant``, ``n_pauses``, ``pause_init``,
  ``control``, ``rationale_source``): analysis selects by those columns and never parses a name.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

# training stages, in pipeline order
STAGES = ("cpt", "sft", "pause-pretrain", "pause-sft", "cot-sft")
PARENT = {
    "cpt": "init",
    "sft": "cpt",
    "pause-pretrain": "cpt",
    "pause-sft": "sft",
    "cot-sft": "sft",
}
VARIANT = {
    "init": "base",
    "cpt": "base",
    "sft": "plain",
    "pause-pretrain": "base",
    "pause-sft": "pause",
    "cot-sft": "cot",
}
# stages that train on the item corpus, not on next-item targets
GROUNDING = ("cpt", "pause-pretrain")
# trained once per seed; every cell starts from one of them
SHARED = ("cpt", "sft", "pause-pretrain")
RECOMMENDERS = ("sft", "pause-sft", "cot-sft")  # stages whose checkpoints recommend
PAPER_PAUSES = 5  # the paper's number of <pause> tokens in the think block
MAX_PAUSES = 512  # the most a run may ask for (training, evaluation and checkpoint metadata)
PAUSE_INITS = ("pretrained", "mean-text", "mean-sid", "default")
# Compute-matched controls of pause-sft (same start, epochs, LR, data; only the think block
# differs): think-only: <think></think>, no pauses; sft-continued: the plain prompt; filler: n
# copies of an ordinary text token instead of <pause>.
CONTROLS = ("think-only", "sft-continued", "filler")
CONTROL_NO_PAUSES = ("think-only", "sft-continued")
FILLER_TEXT = "."  # the ordinary token the filler control repeats


def variant_of(stage: str, control: str = "") -> str:
    """The prompt family a stage trains (and is decoded with)."""
    return "plain" if control == "sft-continued" else VARIANT[stage]


def prompt_of(variant: str) -> str:
    """The prompt a checkpoint of ``variant`` is decoded and probed with: its own, and ``plain`` for
    a ``base`` checkpoint (init, cpt, pause-pretrain), which has trained no recommendation prompt
    yet -- the one meaning of ``base`` everywhere (pass a variant explicitly to read it another
    way)."""
    return "plain" if variant == "base" else variant


@dataclass(frozen=True)
class Cell:
    """One trained condition: a stage and the settings that make it a cell of the experiment."""

    stage: str
    n_pauses: int = PAPER_PAUSES
    pause_init: str = "pretrained"
    control: str = ""
    rationale: str = ""  # cot-sft: the rationale source

    @property
    def name(self) -> str:
        return cell_name(self.stage, self.n_pauses, self.pause_init, self.control, self.rationale)

    @property
    def parent(self) -> str:
        return PARENT[self.stage]

    @property
    def variant(self) -> str:
        return variant_of(self.stage, self.control)

    @property
    def pause_source(self) -> bool:
        """Whether it copies its pause row from the seed's pause-pretrain checkpoint."""
        return self.stage == "pause-sft" and not self.control and self.pause_init == "pretrained"

    def train_values(self) -> dict:
        """The training arguments that make this cell (on top of the preset's ``[train.STAGE]``)."""
        if self.stage == "pause-sft":
            values = {
                "n_pauses": self.n_pauses,
                "pause_init": self.pause_init,
                "control": self.control,
            }
            return {k: v for k, v in values.items() if v != ""}
        if self.stage == "cot-sft":
            return {"rationale": self.rationale} if self.rationale else {}
        return {}


def cell_name(
    stage: str,
    n_pauses: int = PAPER_PAUSES,
    pause_init: str = "pretrained",
    control: str = "",
    rationale: str = "",
) -> str:
    """The name of a cell (see the module docstring); a shared stage is named after itself."""
    if stage == "pause-sft":
        if control in CONTROL_NO_PAUSES:
            return control
        if control == "filler":
            return f"filler-k{n_pauses}"
        return f"pause-k{n_pauses}" + ("" if pause_init == "pretrained" else f"-{pause_init}")
    if stage == "cot-sft":
        return "cot-" + re.sub(r"[^A-Za-z0-9.+-]+", "_", rationale or "template")
    return stage


def matrix(
    pause_counts: Iterable[int] = (PAPER_PAUSES,),
    pause_inits: Iterable[str] = (),
    controls: Iterable[str] = (),
    rationales: Iterable[str] = (),
) -> list[Cell]:
    """The experiment's cells (``sft`` first), without repeats: pause counts (pretrained init),
    other inits at the paper's count, the compute-matched controls, one CoT cell per rationale
    source."""
    cells = [Cell("sft")]
    cells += [Cell("pause-sft", n_pauses=n) for n in pause_counts]
    cells += [Cell("pause-sft", pause_init=i) for i in pause_inits]
    cells += [Cell("pause-sft", control=c) for c in controls]
    cells += [Cell("cot-sft", rationale=r) for r in rationales]
    seen: dict[str, Cell] = {}
    for cell in cells:
        seen.setdefault(cell.name, cell)
    return list(seen.values())


# The roles the claims compare, as identity columns (``None``: any value). The main pause cell is
# the paper's count with the pretrained init; the CoT cell's rationale source is chosen by the
# caller.
ROLES = {
    "plain": {"stage": "sft", "control": ""},
    "pause": {
        "stage": "pause-sft",
        "control": "",
        "n_pauses": PAPER_PAUSES,
        "pause_init": "pretrained",
    },
    "think-only": {"stage": "pause-sft", "control": "think-only"},
    "sft-continued": {"stage": "pause-sft", "control": "sft-continued"},
    "filler": {"stage": "pause-sft", "control": "filler", "n_pauses": PAPER_PAUSES},
    "cot": {"stage": "cot-sft"},
}
