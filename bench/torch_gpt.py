"""The reference the char GPT is held to: the same model and recipe written in PyTorch, eager.

Used by ``gpt_cpu.py`` (speed and budget modes) when ``import torch`` works.
PyTorch is not a dependency of the zoo: install it separately for the bench.

The model is ``gpt/char-4x256``'s: pre-norm blocks, learned positions, causal
attention, tanh GELU, no biases in the dense layers, the output layer tied to the
token embedding, GPT-2's initialisation (every weight N(0, 0.02), the two
projections into the residual stream N(0, 0.02 / sqrt(2 * layers)), LayerNorms 1
and 0). Batches are random ``context + 1``-byte crops of the training windows,
drawn as ``zoo.text.random_crops`` draws them (targets past a window's end do not
count); validation nats per character are counted over ``zoo.text.evaluation_chunks``,
the chunks ``zoo eval`` reads.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from zoo import text

WIDTH, HEADS, LAYERS, CONTEXT, VOCAB = 256, 4, 4, 128, text.VOCAB_SIZE
INIT_STD = 0.02


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(WIDTH), nn.LayerNorm(WIDTH)
        self.qkv, self.out = nn.Linear(WIDTH, 3 * WIDTH, bias=False), nn.Linear(WIDTH, WIDTH, bias=False)
        self.up, self.down = nn.Linear(WIDTH, 4 * WIDTH, bias=False), nn.Linear(4 * WIDTH, WIDTH, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, T, D)`` -> ``(B, T, D)``."""
        b, t, _ = x.shape
        q, k, v = self.qkv(self.ln1(x)).view(b, t, 3, HEADS, WIDTH // HEADS).permute(2, 0, 3, 1, 4)
        x = x + self.out(F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(x.shape))
        return x + self.down(F.gelu(self.up(self.ln2(x)), approximate="tanh"))


class GPT(nn.Module):
    """Tokens ``int64 (B, T)`` -> logits ``(B, T, VOCAB)``."""

    def __init__(self, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.tokens, self.positions = nn.Embedding(VOCAB, WIDTH), nn.Embedding(CONTEXT, WIDTH)
        self.blocks, self.ln = nn.ModuleList(Block() for _ in range(LAYERS)), nn.LayerNorm(WIDTH)
        for name, p in self.named_parameters():
            if p.dim() > 1:  # GPT-2's initialisation; LayerNorms keep 1 and 0
                residual = name.endswith(("out.weight", "down.weight"))
                nn.init.normal_(p, 0.0, INIT_STD / math.sqrt(2 * LAYERS) if residual else INIT_STD)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        x = self.tokens(idx) + self.positions(torch.arange(idx.shape[1]))
        for block in self.blocks:
            x = block(x)
        return self.ln(x) @ self.tokens.weight.T


def crops(rng: np.random.Generator, data: Mapping[str, np.ndarray], batch: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs ``(B, T)`` and targets ``(B, T)`` of random crops; targets past a window's end are -100 (ignored)."""
    rows = rng.integers(0, len(data["text"]), batch)
    length = data["length"][rows]
    starts = rng.integers(0, np.maximum(length - CONTEXT - 1, 0) + 1)
    positions = starts[:, None] + np.arange(CONTEXT + 1)[None, :]
    tokens = torch.from_numpy(np.take_along_axis(data["text"][rows], positions, axis=1).astype(np.int64))
    targets = tokens[:, 1:].masked_fill(torch.from_numpy(positions[:, 1:] >= length[:, None]), -100)
    return tokens[:, :-1], targets


@torch.no_grad()
def validation_nats(model: GPT, data: Mapping[str, np.ndarray], batch: int = 64) -> float:
    """Nats per character over every target of ``data``, chunk by chunk as ``zoo eval`` counts them."""
    tokens, valid = text.evaluation_chunks(data, CONTEXT)
    total, count = 0.0, 0
    for start in range(0, len(tokens), batch):
        t = torch.from_numpy(tokens[start : start + batch].astype(np.int64))
        v = torch.from_numpy(valid[start : start + batch])
        log_probs = F.log_softmax(model(t[:, :-1]), dim=-1).gather(-1, t[:, 1:, None])[..., 0]
        total, count = total - float(log_probs[v].sum()), count + int(v.sum())
    return total / max(count, 1)


def warmup_cosine(peak: float, warmup: int, steps: int, final_fraction: float) -> Callable[[int], float]:
    """The learning rate at step ``s``: linear from 0 over ``warmup`` steps, then cosine to ``peak * final_fraction``."""

    def lr(s: int) -> float:
        if s < warmup:
            return peak * s / warmup
        progress = min(1.0, (s - warmup) / max(steps - warmup, 1))
        return peak * (final_fraction + (1 - final_fraction) * 0.5 * (1 + math.cos(math.pi * progress)))

    return lr


def train_step(model: GPT, optimizer: torch.optim.Optimizer, inputs: torch.Tensor, targets: torch.Tensor, clip: float | None) -> float:
    loss = F.cross_entropy(model(inputs).reshape(-1, VOCAB), targets.reshape(-1), ignore_index=-100)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if clip:
        nn.utils.clip_grad_norm_(model.parameters(), clip)
    optimizer.step()
    return loss.item()


def budget(train: Mapping[str, np.ndarray], subset: Mapping[str, np.ndarray], validation: Mapping[str, np.ndarray], *,
           steps: int, chunk: int, warmup: int, batch: int, lr: float, weight_decay: float) -> None:
    """``steps`` steps of AdamW (warm-up, cosine to a tenth, clipping at 1), evaluated on ``subset`` every ``chunk``.

    Prints validation nats per character against wall minutes, every second counted
    (the evaluations too), then on the whole of ``validation``.
    """
    model = GPT()
    schedule = warmup_cosine(lr, warmup, steps, 0.1)
    optimizer = torch.optim.AdamW(model.parameters(), lr=schedule(0), weight_decay=weight_decay)
    rng, started, loss = np.random.default_rng(0), time.perf_counter(), math.nan
    print(f"{'minutes':>8} {'step':>6} {'train nats':>11} {'val nats/char':>14}")
    for step in range(steps):
        for group in optimizer.param_groups:
            group["lr"] = schedule(step)
        loss = train_step(model, optimizer, *crops(rng, train, batch), clip=1.0)
        if (step + 1) % chunk == 0:
            nats = validation_nats(model, subset)
            print(f"{(time.perf_counter() - started) / 60:8.2f} {step + 1:6d} {loss:11.4f} {nats:14.4f}", flush=True)
    minutes = (time.perf_counter() - started) / 60
    final = validation_nats(model, validation)
    print(f"after {minutes:.1f} minutes ({steps} steps): {final:.4f} nats/char on the whole validation split")
