"""The model side of a checkpoint: tokens, backbones, the catalog, the prompt, the one checkpoint
format.

| module     | holds                                                                     |
|------------|---------------------------------------------------------------------------|
| device     | ``--device auto`` / ``--dtype auto``, autocast, where work ran            |
| compat     | the names that differ between supported                                   |
|            | transformers versions (the KV-cache keyword)                              |
| backbone   | SmolLM2 (GGUF), the tiny test Llama, the                                  |
|            | compact from-scratch decoder, HF ids; new rows                            |
| catalog    | the items a checkpoint recommends from, with their SIDs (``items.jsonl``) |
| prompts    | the recommendation prompt, encoded once for training, decoding and probes |
| checkpoint | save / load / identity of the one checkpoint                              |
|            | format, and the dataset it was built on                                   |
| init_ckpt  | ``python -m pauserec init-ckpt``: backbone + tokens + catalog, untrained  |

The token strings themselves live in :mod:`pauserec.tokens`, below every room (SID indexes use them
too).
"""
