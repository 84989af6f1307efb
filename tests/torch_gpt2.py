"""
A reference GPT-2 in PyTorch, written in nanoGPT's manner, used by the tests
and benchmarks to check libllmc. Test-only: the library never imports torch.

Parameters move to and from llm.c's flat layout (the 16 tensors, each whole
across layers, weights (out, in)) with `to_flat` / `load_flat`, and
`flat_grads` gives the gradients in the same order, so that a test can put the
same weights in both implementations and compare everything element by element.
The token embedding has the padded vocabulary's rows, as in llm.c's files; the
LM head reads only the first vocab_size of them, so padded rows never affect
the loss.
"""
import math
from dataclasses import dataclass

import torch
import torch.nn as nn
from torch.nn import functional as F


@dataclass
class GPTConfig:
    max_seq_len: int = 1024
    vocab_size: int = 50257
    padded_vocab_size: int = 50304
    num_layers: int = 12
    num_heads: int = 12
    channels: int = 768


class CausalSelfAttention(nn.Module):
    def __init__(self, config):
        super().__init__()
        C = config.channels
        self.n_head = config.num_heads
        self.c_attn = nn.Linear(C, 3 * C)  # q, k, v stacked along the output
        self.c_proj = nn.Linear(C, C)

    def forward(self, x):
        B, T, C = x.size()
        q, k, v = self.c_attn(x).split(C, dim=2)
        # (B, T, C) -> (B, nh, T, hs)
        q = q.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        k = k.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        v = v.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        return self.c_proj(y)


class MLP(nn.Module):
    def __init__(self, config):
        super().__init__()
        C = config.channels
        self.c_fc = nn.Linear(C, 4 * C)
        self.gelu = nn.GELU(approximate="tanh")
        self.c_proj = nn.Linear(4 * C, C)

    def forward(self, x):
        return self.c_proj(self.gelu(self.c_fc(x)))


class Block(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.channels)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = nn.LayerNorm(config.channels)
        self.mlp = MLP(config)

    def forward(self, x):
        x = x + self.attn(self.ln_1(x))
        x = x + self.mlp(self.ln_2(x))
        return x


class GPT(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.config = config
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(config.padded_vocab_size, config.channels),
            wpe=nn.Embedding(config.max_seq_len, config.channels),
            h=nn.ModuleList([Block(config) for _ in range(config.num_layers)]),
            ln_f=nn.LayerNorm(config.channels),
        ))

    def forward(self, idx, targets=None):
        B, T = idx.size()
        pos = torch.arange(0, T, dtype=torch.long, device=idx.device)
        x = self.transformer.wte(idx) + self.transformer.wpe(pos)
        for block in self.transformer.h:
            x = block(x)
        x = self.transformer.ln_f(x)
        # LM head tied to the token embedding, over the real vocabulary only
        logits = F.linear(x, self.transformer.wte.weight[: self.config.vocab_size])
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1),
                                   ignore_index=-1)
        return logits, loss

    # ---- llm.c's flat parameter layout ----------------------------------------
    def llmc_tensors(self):
        """For each of llm.c's 16 tensors, the list of torch tensors (one per
        layer for the per-layer ones) that make it up, in llm.c's order."""
        t, hs = self.transformer, self.transformer.h
        return [
            [t.wte.weight], [t.wpe.weight],
            [b.ln_1.weight for b in hs], [b.ln_1.bias for b in hs],
            [b.attn.c_attn.weight for b in hs], [b.attn.c_attn.bias for b in hs],
            [b.attn.c_proj.weight for b in hs], [b.attn.c_proj.bias for b in hs],
            [b.ln_2.weight for b in hs], [b.ln_2.bias for b in hs],
            [b.mlp.c_fc.weight for b in hs], [b.mlp.c_fc.bias for b in hs],
            [b.mlp.c_proj.weight for b in hs], [b.mlp.c_proj.bias for b in hs],
            [t.ln_f.weight], [t.ln_f.bias],
        ]

    def to_flat(self):
        return torch.cat([p.detach().reshape(-1) for group in self.llmc_tensors() for p in group])

    def flat_grads(self):
        return torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1)
                          for group in self.llmc_tensors() for p in group])

    @torch.no_grad()
    def load_flat(self, flat):
        flat = torch.as_tensor(flat, dtype=torch.float32)
        offset = 0
        for group in self.llmc_tensors():
            for p in group:
                p.copy_(flat[offset: offset + p.numel()].view_as(p))
                offset += p.numel()
        assert offset == flat.numel(), f"flat vector has {flat.numel()} floats, model {offset}"

    def tensor_slices(self):
        """(name, start, end) of each of the 16 tensors in the flat vector."""
        names = ["wte", "wpe", "ln1w", "ln1b", "qkvw", "qkvb", "attprojw", "attprojb",
                 "ln2w", "ln2b", "fcw", "fcb", "fcprojw", "fcprojb", "lnfw", "lnfb"]
        out, offset = [], 0
        for name, group in zip(names, self.llmc_tensors()):
            n = sum(p.numel() for p in group)
            out.append((name, offset, offset + n))
            offset += n
        return out

    def configure_optimizer(self, lr, weight_decay, betas, eps):
        """AdamW with llm.c's grouping: the 2-D weights decay, biases and
        LayerNorm parameters do not."""
        decay = [p for p in self.parameters() if p.dim() >= 2]
        no_decay = [p for p in self.parameters() if p.dim() < 2]
        groups = [{"params": decay, "weight_decay": weight_decay},
                  {"params": no_decay, "weight_decay": 0.0}]
        return torch.optim.AdamW(groups, lr=lr, betas=betas, eps=eps)


def init_gpt2_(model, seed=0):
    """GPT-2's random init (N(0, 0.02), residual projections scaled by
    1/sqrt(2L), LayerNorm weight 1, biases 0) from torch's generator; for
    tests that need weights without going through the library."""
    g = torch.Generator().manual_seed(seed)
    scaled_std = 0.02 / math.sqrt(2 * model.config.num_layers)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.zero_()
            elif "ln_" in name:
                p.fill_(1.0)
            else:
                std = scaled_std if name.endswith("c_proj.weight") else 0.02
                p.normal_(0.0, std, generator=g)
    return model
