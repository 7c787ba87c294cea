"""PauseRec Workbench: LLM-based generative recommendation with implicit <pause> reasoning."""

__version__ = "0.1.0"
