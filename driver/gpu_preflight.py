"""``python -m pauserec gpu preflight``: what the GPU run will meet, checked in under half a minute.

Prints the versions the run depends on (:data:`pauserec.model.compat.VERSIONS`: python, torch,
transformers and its KV-cache keyword, tokenizers, accelerate, huggingface_hub, gguf) and the
device, then smoke-tests the run's code on that device with a tiny random Llama for about
``--seconds``: training steps under the run's autocast and fused AdamW (the loss must fall), a
cached decode through :func:`pauserec.model.compat.forward` that must match a full forward, and a
trie-constrained beam search whose beams must all be items.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from pauserec.config import arg, parse_args
from pauserec.decoding import Trie
from pauserec.decoding.generate import prefill
from pauserec.decoding.search import beam_search
from pauserec.errors import UserError
from pauserec.model import backbone
from pauserec.model.compat import VERSIONS, forward
from pauserec.model.device import (
    DEVICES_HELP,
    autocast,
    name_of,
    resolve_device,
    resolve_dtype,
    synchronize,
)
from pauserec.training.loop import LabelledLoss, LoopConfig, make_optimizer


@dataclass
class PreflightArgs:
    """Print versions and the device, then smoke-test training and decoding on it."""

    seconds: float = arg(20.0, "smoke-test length, about", gt=0.0)
    device: str = arg("auto", DEVICES_HELP)


def smoke(device: torch.device, seconds: float) -> str:
    """Train, then decode, a tiny random Llama on ``device``; raises if a result is wrong."""
    start = time.time()
    gen = torch.Generator().manual_seed(0)
    model, _ = backbone.build_scratch("tiny", [" ".join(f"w{i}" for i in range(200))])
    model.to(device).train()
    dtype = resolve_dtype("auto", device)
    net, opt = LabelledLoss(model), make_optimizer(model, LoopConfig(lr=3e-3), device, {})
    ids = torch.randint(4, model.config.vocab_size, (8, 48), generator=gen).to(device)  # (B, T)
    mask, pos = torch.ones_like(ids), torch.arange(48, device=device).expand(8, -1)
    losses = []
    while time.time() - start < seconds / 2 and len(losses) < 500:
        with autocast(device, dtype):
            loss, n = net(ids, ids, mask, pos)
        opt.zero_grad(set_to_none=True)
        (loss / n).backward()
        opt.step()
        losses.append(loss.item() / n.item())
    synchronize(device)
    if not losses[-1] < losses[0]:
        raise UserError(f"smoke: the loss did not fall ({losses[0]:.3f} -> {losses[-1]:.3f})")
    model.eval()
    with torch.no_grad():
        full = model(input_ids=ids[:, :17]).logits[:, -1].float()  # (B, V)
        _, cache, keys = prefill(model, ids[:, :16].tolist())
        step, _ = forward(
            model,
            cache,
            input_ids=ids[:, 16:17],
            attention_mask=torch.cat([keys, keys.new_ones((8, 1))], 1),
            position_ids=torch.full((8, 1), 16, device=device),
        )
    gap = (step.logits[:, -1].float() - full).abs().max().item()
    if gap > 1e-3:
        raise UserError(f"smoke: the cached decode differs from a full forward by {gap:.2g}")
    items = torch.randint(4, model.config.vocab_size, (64, 3), generator=gen).unique(dim=0)
    _, found, _ = beam_search(model, ids[:, :16].tolist(), Trie(items.tolist()).to(device), beams=8)
    if (found < 0).any():
        raise UserError("smoke: the constrained beam search returned a non-item")
    synchronize(device)
    return (
        f"smoke ok on {name_of(device)} in {time.time() - start:.1f}s: {len(losses)} {dtype} "
        f"steps, loss {losses[0]:.3f} -> {losses[-1]:.3f}; cached decode = full forward (max "
        f"gap {gap:.1e}); beam search: 8 users x 8 beams, all items"
    )


def main(argv: list[str] | None = None) -> str:
    args = parse_args(PreflightArgs, argv, "pauserec gpu preflight")
    device = resolve_device(args.device)
    print(VERSIONS, flush=True)
    print(
        f"device: {name_of(device)}"
        + (
            f", CUDA {torch.version.cuda}, "
            f"{torch.cuda.get_device_properties(device).total_memory / 2**30:.0f} GiB"
            if device.type == "cuda"
            else ""
        ),
        flush=True,
    )
    line = smoke(device, args.seconds)
    print(line, flush=True)
    return line
