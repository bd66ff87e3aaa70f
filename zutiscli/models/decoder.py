"""The instance branch's building blocks: sine positions, MLPs, the query-based transformer decoder.

ZUTIS's decoder follows DETR/Mask2Former: learned queries attend to per-pixel features (the
"values") through a stack of transformer decoder layers; each layer's queries go through an MLP
and a dot product with the values gives one mask logit map per query. The loss is applied to the
masks of every layer, so :class:`QueryDecoder` returns the normalised queries of all layers.
"""

from __future__ import annotations

import math

import torch
from torch import nn


def sine_positions(height: int, width: int, dim: int, *, temperature: float = 10000.0,
                   device: torch.device | None = None, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """2-D sine/cosine position encoding (DETR), ``(height * width, dim)``, row-major.

    Half of the channels encode y, half x; coordinates are normalised to (0, 2*pi]. ``dim`` must
    be divisible by 4.
    """
    if dim % 4:
        raise ValueError(f"sine position dim must be divisible by 4, got {dim}")
    quarter = dim // 4
    y = torch.arange(1, height + 1, device=device, dtype=torch.float32) / height * 2 * math.pi
    x = torch.arange(1, width + 1, device=device, dtype=torch.float32) / width * 2 * math.pi
    freq = temperature ** (torch.arange(quarter, device=device, dtype=torch.float32) / quarter)
    pos_y = y[:, None] / freq  # (h, quarter)
    pos_x = x[:, None] / freq  # (w, quarter)
    enc_y = torch.cat([pos_y.sin(), pos_y.cos()], dim=1)[:, None, :].expand(height, width, 2 * quarter)
    enc_x = torch.cat([pos_x.sin(), pos_x.cos()], dim=1)[None, :, :].expand(height, width, 2 * quarter)
    return torch.cat([enc_y, enc_x], dim=-1).reshape(height * width, dim).to(dtype)


class MLP(nn.Sequential):
    """``layers`` linear layers with ReLU between them: ``in_dim -> hidden -> ... -> out_dim``."""

    def __init__(self, in_dim: int, hidden: int, out_dim: int, layers: int = 3):
        dims = [in_dim] + [hidden] * (layers - 1) + [out_dim]
        modules: list[nn.Module] = []
        for index, (a, b) in enumerate(zip(dims[:-1], dims[1:])):
            modules.append(nn.Linear(a, b))
            if index < layers - 1:
                modules.append(nn.ReLU(inplace=True))
        super().__init__(*modules)


class DecoderLayer(nn.Module):
    """Self-attention among queries, cross-attention to the pixels, feed-forward (post-norm, DETR)."""

    def __init__(self, dim: int, heads: int, ffn: int, dropout: float = 0.0):
        super().__init__()
        self.self_attn = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.cross_attn = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.ffn = nn.Sequential(nn.Linear(dim, ffn), nn.ReLU(inplace=True), nn.Dropout(dropout), nn.Linear(ffn, dim))
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.norm3 = nn.LayerNorm(dim)
        self.dropout = nn.Dropout(dropout)

    def forward(self, queries: torch.Tensor, query_pos: torch.Tensor, memory: torch.Tensor,
                memory_pos: torch.Tensor) -> torch.Tensor:
        q = k = queries + query_pos
        queries = self.norm1(queries + self.dropout(self.self_attn(q, k, queries, need_weights=False)[0]))
        attended = self.cross_attn(queries + query_pos, memory + memory_pos, memory, need_weights=False)[0]
        queries = self.norm2(queries + self.dropout(attended))
        return self.norm3(queries + self.dropout(self.ffn(queries)))


class QueryDecoder(nn.Module):
    """``num_queries`` learned queries decoded against pixel features by ``layers`` decoder layers.

    ``forward(memory (B, L, dim), memory_pos (L, dim))`` returns ``(layers, B, Q, dim)``: the
    queries after each layer, passed through a shared final layer norm (as DETR's auxiliary outputs).
    """

    def __init__(self, dim: int, num_queries: int = 100, layers: int = 6, heads: int = 8, ffn: int = 2048,
                 dropout: float = 0.0):
        super().__init__()
        self.query_feat = nn.Embedding(num_queries, dim)
        self.query_pos = nn.Embedding(num_queries, dim)
        self.layers = nn.ModuleList(DecoderLayer(dim, heads, ffn, dropout) for _ in range(layers))
        self.norm = nn.LayerNorm(dim)

    def forward(self, memory: torch.Tensor, memory_pos: torch.Tensor) -> torch.Tensor:
        batch = memory.shape[0]
        queries = self.query_feat.weight.unsqueeze(0).expand(batch, -1, -1)
        query_pos = self.query_pos.weight.unsqueeze(0).expand(batch, -1, -1)
        memory_pos = memory_pos.unsqueeze(0).to(memory.dtype)
        outputs = []
        for layer in self.layers:
            queries = layer(queries, query_pos, memory, memory_pos)
            outputs.append(self.norm(queries))
        return torch.stack(outputs)
