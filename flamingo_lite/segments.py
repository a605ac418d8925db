"""The segment view of immediate-media cross-attention: each stretch of text attends only to its own media.

With `only_attend_immediate_media=True` (the paper's choice, Sec. 2.3 and Fig. 7) a text token of text time k
attends to the m latents of media k and to nothing else. The masked computation (`MaskedCrossAttention`'s
masked path, lesson 05) still scores every token against the latents of *every* media and then masks all but
one media away, so its cost grows with the number of media t: n * (t*m) scores per head. But the text that
shares a text time is one contiguous *segment* (text time is a running count, so it never goes down), and a
segment attends to exactly one media. Cutting the text into its segments and attending each segment to its own
media gives the same numbers with n * m scores per head, whatever t is (lesson 09 proves the two are equal).

How, without a Python loop over segments (all index arithmetic on tensors, so it runs on any device):

1. `segment_layout(media_locations, num_media)` cuts each segment into *chunks* of at most `chunk` tokens,
   so one long segment does not force every other segment to be padded to its length. Every chunk
   belongs to one (batch row, media) pair. It returns index tensors: which text token fills each padded slot,
   which media each chunk attends to, and where each token's output lands.
2. `segment_attend(q, k, v, layout, heads=h, scale=...)` gathers the queries into (chunks, h, chunk, e), gathers each
   chunk's media keys and values into (chunks, h, m, e), runs one unmasked SDPA call over all chunks, and
   scatters the outputs back to (b, n, h*e). Tokens before the first media point at a zero row, so their output
   is exactly zero and no gradient flows through them. Padding slots are computed and thrown away.

Both steps are gathers, whose backward pass is a scatter-add, so autograd gives the exact gradients.

Shapes, in einops notation: b batch, n text tokens, t media, m latents per media, h heads, e head width,
c chunks in all, s slots per chunk (`chunk`).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from einops import rearrange

from .masks import text_time

DEFAULT_MAX_CHUNK = 256  # longest chunk of text given to one SDPA problem; longer segments are cut
# one more chunk costs about as much as this many more padded query slots (it gathers its own m keys and values);
# measured on a CPU with benchmarks/bench.py, it only steers the choice of the chunk size, never the result
CHUNK_COST_IN_SLOTS = 24


@dataclass(frozen=True)
class SegmentLayout:
    """Where every text token goes in the padded per-chunk batch, and back.

    slot_token: (c*s,) long, the flat text index `b*n + i` that fills each padded slot; `b*n` (one past the end)
        marks a padding slot, filled with zeros.
    chunk_media: (c,) long, the flat media index `b*t + j` that each chunk attends to.
    token_slot: (b*n,) long, the padded slot holding each token's output; `c*s` (one past the end) for text that
        sees no media, whose output is exactly zero.
    num_chunks, chunk: c and s.
    """

    slot_token: torch.Tensor
    chunk_media: torch.Tensor
    token_slot: torch.Tensor
    num_chunks: int
    chunk: int


def choose_chunk(seg_lengths: torch.Tensor, max_chunk: int = DEFAULT_MAX_CHUNK) -> int:
    """The chunk size s: large enough to need few chunks, small enough not to pad short segments much.

    seg_lengths: (b, t) tokens per segment. Tries s = the longest segment and powers of two below it (never above
    max_chunk) and keeps the one with the least padded slots + CHUNK_COST_IN_SLOTS * chunks. With equal segments
    this is their length; one long segment among short ones is cut instead of padding every short one to it.
    """
    longest = int(seg_lengths.max()) if seg_lengths.numel() else 0
    if longest <= 1:
        return 1
    candidates = {min(longest, max_chunk)} | {2**p for p in range(3, 12) if 2**p < min(longest, max_chunk)}

    def cost(s: int) -> int:
        chunks = int(((seg_lengths + s - 1) // s).sum())
        return chunks * s + CHUNK_COST_IN_SLOTS * chunks

    return min(sorted(candidates, reverse=True), key=cost)  # ties go to the larger chunk


def segment_layout(
    media_locations: torch.Tensor, num_media: int, max_chunk: int = DEFAULT_MAX_CHUNK
) -> SegmentLayout:
    """Cut the text into per-media chunks: (b, n) bool media_locations -> SegmentLayout.

    A segment is the run of tokens with the same text time k >= 1; it attends to media k (index k - 1).
    Each segment is cut into ceil(length / s) chunks of s slots, s from `choose_chunk` (at most max_chunk).
    `media_locations` must already be checked (bool, at most `num_media` markers per row).
    """
    b, n = media_locations.shape
    device = media_locations.device
    times = text_time(media_locations)  # (b, n): 0 before the first media, then 1, 2, ...
    sees = times > 0  # (b, n): tokens that attend to some media

    # length of each segment, with column 0 holding the text before the first media
    lengths = torch.zeros(b, num_media + 1, dtype=torch.long, device=device)  # (b, t+1)
    lengths.scatter_add_(1, times, torch.ones_like(times))  # (b, t+1)
    starts = lengths.cumsum(dim=1) - lengths  # (b, t+1): segments are contiguous runs in time order
    position = torch.arange(n, device=device) - starts.gather(1, times)  # (b, n): place within the segment

    seg_lengths = lengths[:, 1:]  # (b, t): tokens attending to each media
    chunk = choose_chunk(seg_lengths.cpu(), max_chunk)  # s; a (b, t) table, read on the CPU in one transfer
    chunks_per_media = (seg_lengths + chunk - 1) // chunk  # (b, t): ceil(length / s), 0 for unused media
    chunks_flat = chunks_per_media.flatten()  # (b*t,)
    first_chunk = chunks_flat.cumsum(0) - chunks_flat  # (b*t,): index of each segment's first chunk
    num_chunks = int(chunks_flat.sum())  # c

    media_of_token = torch.arange(b, device=device)[:, None] * num_media + (times - 1).clamp(min=0)  # (b, n)
    chunk_of_token = first_chunk[media_of_token] + torch.div(position, chunk, rounding_mode="floor")  # (b, n)
    slot = chunk_of_token * chunk + position % chunk  # (b, n): padded slot of each token
    token_slot = torch.where(sees, slot, num_chunks * chunk).flatten()  # (b*n,)

    token_index = torch.arange(b * n, device=device)  # (b*n,)
    slot_token = torch.full((num_chunks * chunk,), b * n, dtype=torch.long, device=device)  # (c*s,): padding
    slot_token[token_slot[sees.flatten()]] = token_index[sees.flatten()]  # (c*s,)
    chunk_media = torch.repeat_interleave(  # (c,): chunk -> flat media index
        torch.arange(b * num_media, device=device), chunks_flat, output_size=num_chunks
    )
    return SegmentLayout(slot_token, chunk_media, token_slot, num_chunks, chunk)


def segment_attend(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layout: SegmentLayout, *, heads: int, scale: float
) -> torch.Tensor:
    """Each chunk of text attends to its own media's latents; returns the same as the masked computation.

    q: (b, n, h*e) queries of the text; k, v: (b, t, m, h*e) keys and values of each media's m latents.
    Returns (b, n, h*e), exactly zero for text that sees no media.
    """
    b, n, inner = q.shape
    c, s = layout.num_chunks, layout.chunk

    # queries: one row per token, plus a zero row that the padding slots copy
    q_rows = torch.cat((q.reshape(b * n, inner), q.new_zeros(1, inner)), dim=0)  # (b*n + 1, h*e)
    q_chunks = rearrange(q_rows[layout.slot_token], "(c s) (h e) -> c h s e", c=c, h=heads)  # (c, h, s, e)

    # keys and values: each chunk takes its own media's m latents
    k_chunks = k.flatten(0, 1)[layout.chunk_media]  # (c, m, h*e)
    v_chunks = v.flatten(0, 1)[layout.chunk_media]  # (c, m, h*e)
    k_chunks = rearrange(k_chunks, "c m (h e) -> c h m e", h=heads)  # (c, h, m, e)
    v_chunks = rearrange(v_chunks, "c m (h e) -> c h m e", h=heads)  # (c, h, m, e)

    out = F.scaled_dot_product_attention(q_chunks, k_chunks, v_chunks, scale=scale)  # (c, h, s, e): no mask needed

    # back to text order; text that sees no media reads the appended zero row
    out_rows = rearrange(out, "c h s e -> (c s) (h e)")  # (c*s, h*e)
    out_rows = torch.cat((out_rows, out_rows.new_zeros(1, inner)), dim=0)  # (c*s + 1, h*e)
    return out_rows[layout.token_slot].view(b, n, inner)  # (b, n, h*e)
