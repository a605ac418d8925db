"""A small decoder-only language model, the part of Flamingo that writes the text.

Flamingo starts from a large language model pretrained on text alone (Chinchilla) and freezes it (paper,
Sec. 2.2): the model keeps everything it knows about language, and only the new layers learn to look at
pictures. Here the same story in miniature: `TinyLM` is a GPT in the style of nanoGPT (token and position
embeddings, pre-LayerNorm blocks of causal self-attention and an MLP, a final LayerNorm and a linear head),
trained first on the captions alone. It learns the grammar (`<image> a`, then a colour and a shape, then
`<eoc>`) and to keep the caption format of the sequence, but it cannot know *which* colour or shape: that
is in the pictures it never sees.

`LMConfig(token_shift=4)` (off by default) puts a causal depthwise convolution of that width before each
attention layer: a learned *token shift*, so every position also carries the identities of the few tokens just
before it. In-context copying (`red circle is dax <eoc> ... red circle is` -> `dax`) is an induction circuit: the
query must find the earlier position whose *previous* tokens match its own, and copy the token there. A plain
2-layer attention model must first build "what came before me" with one attention layer and only then match on
it with the next; with the shift, the key of `dax` already holds `is`, `circle`, `red`, and one attention layer
can match on them. `flamingo_lite.tiny.fewshot` uses it; the captioning model does not.

`LMConfig(positions="none")` drops the position embedding. A causal model still knows the order of its tokens
(each one sees only those before it, and the token shift says which came just before), and an induction match
needs no absolute position at all. So a model trained on sequences of 200 tokens works unchanged on longer
prompts, where a learned position embedding would meet rows it never trained.

The model is written as three steps, `embed`, `blocks`, `head`, so that `flamingo_lite.tiny.model.Flamingo` can
run the very same layers with gated cross-attention blocks placed before them.

Shapes: b batch, n tokens, d the width, h heads, e the width of one head, V the vocabulary size.
"""
from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from ..attention import attend
from ..validation import check_non_negative_int, check_positive_int


@dataclass
class LMConfig:
    """The sizes of a `TinyLM`."""

    vocab_size: int = 15
    max_len: int = 32  # the longest sequence the position embedding covers
    dim: int = 64
    depth: int = 2  # number of transformer blocks
    heads: int = 4
    mlp_mult: int = 4
    token_shift: int = 0  # width of a causal depthwise convolution before each attention layer; 0: none
    positions: str = "learned"  # "learned": a position embedding up to max_len; "none": no position signal at all

    def __post_init__(self):
        self.check()

    def check(self) -> "LMConfig":
        """Every size in range, named in the error (run when the config is made, and again by `TinyLM`)."""
        for name in ("vocab_size", "max_len", "dim", "depth", "heads", "mlp_mult"):
            check_positive_int(f"LMConfig.{name}", getattr(self, name))
        if isinstance(self.token_shift, bool) or not isinstance(self.token_shift, int) or self.token_shift < 0:
            raise ValueError(f"LMConfig.token_shift must be an int >= 0 (0: no shift), got {self.token_shift!r}")
        if self.positions not in ("learned", "none"):
            raise ValueError(f"LMConfig.positions must be 'learned' or 'none', got {self.positions!r}")
        if self.dim % self.heads:
            raise ValueError(f"LMConfig.dim ({self.dim}) must be divisible by LMConfig.heads ({self.heads})")
        return self


def causal_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Causal attention of the last s positions over all P + s: q (b, h, s, e), k and v (b, h, P+s, e) -> (b, h, s, e).

    Query j sits at position P + j and sees the keys 0 .. P + j (P = 0: the whole sequence; P > 0: new tokens
    after a KV cache). It is the package's one attention computation, `flamingo_lite.attention.attend`, with the
    causal mask, so its NaN contract holds here too: a NaN or Inf reaches exactly the rows allowed to see it, its
    own row and every later one, and never an earlier row (the CPU kernel alone would spread a NaN value to every
    row, and give a NaN query an output of 0).
    """
    b, _, s, e = q.shape
    total = k.shape[2]
    causal = torch.ones(s, total, dtype=torch.bool, device=q.device).tril(total - s)  # (s, P+s): j sees keys <= P + j
    return attend(q, k, v, scale=e**-0.5, mask=causal.expand(b, s, total))  # (b, h, s, e)


class CausalSelfAttention(nn.Module):
    """Multi-head self-attention where each token sees itself and the tokens before it: (b, n, d) -> (b, n, d)."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        check_positive_int("dim", dim)
        check_positive_int("heads", heads)
        if dim % heads:
            raise ValueError(f"dim ({dim}) must be divisible by heads ({heads})")
        self.heads = heads
        self.to_qkv = nn.Linear(dim, 3 * dim)
        self.to_out = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self.to_qkv(x).chunk(3, dim=-1)  # 3 x (b, n, d)
        q, k, v = (rearrange(z, "b n (h e) -> b h n e", h=self.heads) for z in (q, k, v))  # 3 x (b, h, n, e)
        out = causal_attention(q, k, v)  # (b, h, n, e)
        return self.to_out(rearrange(out, "b h n e -> b n (h e)"))  # (b, n, d)


class TokenShift(nn.Module):
    """`h + sum_j w_j * h[i - j]`, j = 0 .. width-1: a causal depthwise convolution, written as shifted copies
    (cheaper on a CPU than `nn.Conv1d(groups=dim)`): (b, n, d) -> (b, n, d)."""

    def __init__(self, dim: int, width: int):
        super().__init__()
        check_positive_int("dim", dim)
        self.width = check_positive_int("width", width)
        self.weight = nn.Parameter(torch.randn(width, dim) / math.sqrt(width))  # (width, d): one filter per channel

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        out = h
        for j in range(self.width):
            shifted = F.pad(h, (0, 0, j, 0))[:, : h.shape[1]]  # (b, n, d): position i holds h[i - j], zeros before 0
            out = out + self.weight[j] * shifted  # (b, n, d)
        return out


class Block(nn.Module):
    """One pre-LayerNorm transformer block: `x + attn(ln(x))`, then `x + mlp(ln(x))`.

    With `token_shift` > 0 the attention reads `shift(ln(x))`, which mixes in the previous tokens (see the module doc).
    """

    def __init__(self, dim: int, heads: int, mlp_mult: int = 4, token_shift: int = 0):
        super().__init__()
        check_positive_int("mlp_mult", mlp_mult)
        check_non_negative_int("token_shift", token_shift)
        self.ln_1 = nn.LayerNorm(dim)
        if token_shift:
            self.shift = TokenShift(dim, token_shift)
        self.attn = CausalSelfAttention(dim, heads)
        self.ln_2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, mlp_mult * dim), nn.GELU(), nn.Linear(mlp_mult * dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.ln_1(x)  # (b, n, d)
        if hasattr(self, "shift"):
            h = self.shift(h)  # (b, n, d): each position also holds its predecessors
        x = x + self.attn(h)  # (b, n, d)
        x = x + self.mlp(self.ln_2(x))  # (b, n, d)
        return x


class TinyLM(nn.Module):
    """A decoder-only language model: tokens (b, n) long -> next-token logits (b, n, V)."""

    def __init__(self, config: LMConfig | None = None):
        super().__init__()
        self.config = config = (config if config is not None else LMConfig()).check()  # again: fields may have changed
        self.tok_emb = nn.Embedding(config.vocab_size, config.dim)
        if config.positions == "learned":
            self.pos_emb = nn.Embedding(config.max_len, config.dim)
        self.blocks = nn.ModuleList([Block(config.dim, config.heads, config.mlp_mult, config.token_shift) for _ in range(config.depth)])
        self.ln_f = nn.LayerNorm(config.dim)
        self.lm_head = nn.Linear(config.dim, config.vocab_size, bias=False)

    def check_tokens(self, tokens) -> torch.Tensor:
        if not isinstance(tokens, torch.Tensor):
            raise TypeError(f"tokens must be a torch.Tensor of shape (batch, text), got {type(tokens).__name__}")
        if tokens.ndim != 2:
            raise ValueError(f"tokens must have shape (batch, text), got shape {tuple(tokens.shape)}")
        if tokens.dtype not in (torch.long, torch.int, torch.int32, torch.int64):
            raise TypeError(f"tokens must be integer ids, got dtype {tokens.dtype}")
        if tokens.device != self.tok_emb.weight.device:
            raise ValueError(
                f"tokens is on device {tokens.device} but the language model's weights are on "
                f"{self.tok_emb.weight.device}; move one of them, e.g. tokens.to({str(self.tok_emb.weight.device)!r})"
            )
        if tokens.shape[1] > self.config.max_len:
            raise ValueError(f"tokens has {tokens.shape[1]} positions but max_len is {self.config.max_len}")
        if tokens.numel() and (int(tokens.min()) < 0 or int(tokens.max()) >= self.config.vocab_size):
            raise ValueError(f"token ids must lie in [0, {self.config.vocab_size}), got [{int(tokens.min())}, {int(tokens.max())}]")
        return tokens

    def embed(self, tokens: torch.Tensor, start: int = 0) -> torch.Tensor:
        """Token plus position embeddings of positions start, start+1, ...: (b, n) long -> (b, n, d)."""
        x = self.tok_emb(tokens)  # (b, n, d)
        if self.config.positions == "none":
            return x
        positions = torch.arange(start, start + tokens.shape[1], device=tokens.device)  # (n,)
        return x + self.pos_emb(positions)  # (b, n, d)

    def head(self, x: torch.Tensor) -> torch.Tensor:
        """Final LayerNorm and the linear head: (b, n, d) -> (b, n, V)."""
        return self.lm_head(self.ln_f(x))  # (b, n, V)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        tokens = self.check_tokens(tokens)
        x = self.embed(tokens)  # (b, n, d)
        for block in self.blocks:
            x = block(x)  # (b, n, d)
        return self.head(x)  # (b, n, V)


@contextmanager
def zero_attention_heads(lm: TinyLM, heads):
    """Within the `with` block, the output of each attention head `(layer, head)` in `heads` is zero.

    An ablation, to measure what a head does rather than read its attention weights: a forward pre-hook on the
    layer's output projection zeroes that head's e channels of (b, n, h*e), so the model runs as if the head
    wrote nothing. Wherever `lm`'s blocks run (inside a `Flamingo` too) the heads stay zeroed; they come back
    when the block ends, even on an error.
    """
    heads = [tuple(pair) for pair in heads]
    for pair in heads:
        if len(pair) != 2 or not all(isinstance(i, int) and not isinstance(i, bool) for i in pair):
            raise TypeError(f"heads must be (layer, head) pairs of ints, got {pair!r}")
        layer, head = pair
        if not 0 <= layer < len(lm.blocks) or not 0 <= head < lm.blocks[layer].attn.heads:
            raise ValueError(f"head {pair} is out of range: the model has {len(lm.blocks)} layers of "
                             f"{lm.blocks[0].attn.heads} heads")
    hooks = []
    for layer, head in heads:
        attn = lm.blocks[layer].attn
        width = attn.to_out.in_features // attn.heads  # e

        def zero_head(module, args, channels=slice(head * width, (head + 1) * width)):
            x = args[0].clone()  # (b, n, h*e): the heads' outputs side by side
            x[..., channels] = 0
            return (x,)

        hooks.append(attn.to_out.register_forward_pre_hook(zero_head))
    try:
        yield lm
    finally:
        for hook in hooks:
            hook.remove()
