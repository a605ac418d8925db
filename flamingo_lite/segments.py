"""The segment view of immediate-media cross-attention: each stretch of text attends only to its own media.

With `only_attend_immediate_media=True` (the paper's choice, Sec. 2.3 and Fig. 7) a text token of text time k
attends to the m latents of media k and to nothing else. The masked computation (`MaskedCrossAttention`'s
masked path, lesson 05) still scores every token against the latents of *every* media and then masks all but
one media away, so its cost grows with the number of media t: n * (t*m) scores per head. But the text that
shares a text time is one contiguous *segment* (text time is a running count, so it never goes down), and a
segment attends to exactly one media. Cutting the text into its segments and attending each segment to its own
media gives the same numbers with n * m scores per head, whatever t is (lesson 10 proves the two are equal).

How, without a Python loop over segments (all index arithmetic on tensors, so it runs on any device):

1. `segment_layout(media_locations, num_media)` cuts each segment into *chunks* of at most `chunk` tokens,
   so one long segment does not force every other segment to be padded to its length. Every chunk
   belongs to one (batch row, media) pair. It returns index tensors: which text token fills each padded slot,
   which media each chunk attends to, and where each token's output lands.
2. `segment_attend(q, k, v, layout, heads=h, scale=...)` gathers the queries into (chunks, h, chunk, e), gathers each
   chunk's media keys and values into (chunks, h, m, e), runs one unmasked SDPA call over all chunks, and
   gathers the outputs back to (b, n, h*e). Padding slots are computed and thrown away. Tokens before the first
   media get exactly zero output and no gradient. The attention itself is `flamingo_lite.attention.attend`, so a
   non-finite query or media gives NaN rows exactly as on the masked path (one contract, stated there).

Every token has exactly one slot and every used slot one token, so the query and output gathers are each other's
inverse: their backward passes are gathers too (`regroup_rows`), not scatter-adds, which is where much of the
time went. The keys and values are gathered with `index_select`, whose backward adds up the chunks of a media.

The layout holds host values (the number of chunks and the chunk size), so it is made once per batch: the
`MediaLocations` a model gives every gated block makes it on first use and keeps it. `torch.compile` takes the
masked path instead (see `flamingo_lite.cross_attention`).

Shapes, in einops notation: b batch, n text tokens, t media, m latents per media, h heads, e head width,
c chunks in all, s slots per chunk (`chunk`).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from einops import rearrange

from .attention import attend
from .masks import text_time

DEFAULT_MAX_CHUNK = 256  # longest chunk of text given to one SDPA problem; longer segments are cut
# one more chunk costs about as much as this many more padded query slots (it gathers its own m keys and values).
# It only steers the chunk size, never the result, and it earns its place: with markers at random places (8 and
# 32 media, 1024 tokens) padding every segment to the longest instead made a training step 6-15% slower.
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
    slot_source, token_read: slot_token and token_slot with their one-past-the-end marks replaced by 0, the
        indices the gathers use (what such a slot or token reads is thrown away).
    blind_tokens, padding_slots: (k,) long, the tokens that see no media and the slots that hold no token, or None
        when there are none (read once, on the host).
    media_chunk, unused_media, one_chunk_per_media: when no media has more than one chunk (host bool), the chunk of
        each flat media (0 if unused) and the media with no chunk (or None): the key and value gathers are then
        one-to-one too.
    batch, text, num_media: b, n and t, checked against the inputs of every layer that is given this layout.
    """

    slot_token: torch.Tensor
    chunk_media: torch.Tensor
    token_slot: torch.Tensor
    num_chunks: int
    chunk: int
    slot_source: torch.Tensor
    token_read: torch.Tensor
    blind_tokens: torch.Tensor | None
    padding_slots: torch.Tensor | None
    media_chunk: torch.Tensor
    unused_media: torch.Tensor | None
    one_chunk_per_media: bool
    batch: int
    text: int
    num_media: int

    def check_fits(self, batch: int, text: int, num_media: int) -> None:
        """A layout is made for one batch: the same b, n and t, or a ValueError naming both."""
        if (self.batch, self.text, self.num_media) != (batch, text, num_media):
            raise ValueError(
                f"layout was computed for (batch, text, media) = ({self.batch}, {self.text}, {self.num_media}), "
                f"but the inputs have ({batch}, {text}, {num_media}); compute it with segment_layout for this batch"
            )


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
    # text time never goes down along a row, so each segment starts where its time is first reached
    bounds = torch.searchsorted(times, torch.arange(num_media + 2, device=device).expand(b, -1).contiguous())  # (b, t+2)
    starts = bounds[:, :-1]  # (b, t+1): segments are contiguous runs in time order
    lengths = bounds[:, 1:] - starts  # (b, t+1)
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
    return SegmentLayout(
        slot_token, chunk_media, token_slot, num_chunks, chunk,
        slot_source=slot_token.masked_fill(slot_token == b * n, 0), token_read=token_slot.masked_fill(~sees.flatten(), 0),
        blind_tokens=None if bool(sees.all()) else (~sees.flatten()).nonzero().flatten(),
        padding_slots=None if int(sees.sum()) == num_chunks * chunk else (slot_token == b * n).nonzero().flatten(),
        media_chunk=first_chunk.masked_fill(chunks_flat == 0, 0), unused_media=None if bool((chunks_flat > 0).all()) else (chunks_flat == 0).nonzero().flatten(),
        one_chunk_per_media=bool((chunks_flat <= 1).all()), batch=b, text=n, num_media=num_media,
    )


class RegroupRows(torch.autograd.Function):
    """`src.index_select(0, index)` whose backward is the inverse gather, for a one-to-one regrouping of rows.

    index: (r,) the source row of each output row; inverse: (src rows,) the output row holding each source row.
    zero_out: (k,) output rows set to exactly 0 (text that sees nothing), or None; zero_grad: (k,) source rows whose
    gradient is 0 because no output row holds them (padding slots, text that sees nothing), or None. Both are short
    index lists, filled in place, so neither pass makes another full copy.
    """

    @staticmethod
    def forward(ctx, src, index, inverse, zero_out, zero_grad):
        ctx.save_for_backward(inverse, zero_grad)
        out = src.index_select(0, index)  # (r, ...)
        if zero_out is not None:
            out.index_fill_(0, zero_out, 0.0)  # (r, ...)
        return out

    @staticmethod
    def backward(ctx, grad):
        inverse, zero_grad = ctx.saved_tensors
        grad_src = grad.index_select(0, inverse)  # (src rows, ...)
        if zero_grad is not None:
            grad_src.index_fill_(0, zero_grad, 0.0)  # (src rows, ...)
        return grad_src, None, None, None, None


def regroup_rows(src, index, inverse, zero_out=None, zero_grad=None):
    """Rows of `src` (rows, ...) picked by `index`; see `RegroupRows`."""
    return RegroupRows.apply(src, index, inverse, zero_out, zero_grad)


class SpreadRows(torch.autograd.Function):
    """`src.index_select(0, index)` for a sorted `index` that may repeat a row (a media cut into several chunks).

    The backward adds up the gradients of the copies of each row with one matrix product against a 0/1 matrix
    (rows x copies), which on a CPU is many times faster than `index_add_`; the copies of one row are few.
    """

    @staticmethod
    def forward(ctx, src, index):
        ctx.save_for_backward(index)
        ctx.rows = src.shape[0]
        return src.index_select(0, index)  # (r, ...)

    @staticmethod
    def backward(ctx, grad):
        (index,) = ctx.saved_tensors
        r = index.shape[0]
        owner = torch.zeros(ctx.rows, r, dtype=grad.dtype, device=grad.device)  # (rows, r)
        owner[index, torch.arange(r, device=grad.device)] = 1.0  # (rows, r): which row each copy came from
        grad_src = owner @ grad.reshape(r, -1)  # (rows, f)
        return grad_src.view(ctx.rows, *grad.shape[1:]), None


def segment_attend(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layout: SegmentLayout, *, heads: int, scale: float
) -> torch.Tensor:
    """Each chunk of text attends to its own media's latents; returns the same as the masked computation.

    q: (b, n, h*e) queries of the text; k, v: (b, t, m, h*e) keys and values of each media's m latents.
    Returns (b, n, h*e), exactly zero for text that sees no media, NaN for text whose query or media is not finite.
    """
    b, n, inner = q.shape
    c, s = layout.num_chunks, layout.chunk
    slot_token, token_slot = layout.slot_source, layout.token_read  # (c*s,), (b*n,)

    # queries: each slot takes its token's row (the backward gathers each token's gradient back from its slot)
    q_flat = q.reshape(b * n, inner)  # (b*n, h*e)
    q_slots = regroup_rows(q_flat, slot_token, token_slot, zero_grad=layout.blind_tokens)  # (c*s, h*e)
    q_chunks = rearrange(q_slots, "(c s) (h e) -> c h s e", c=c, h=heads)  # (c, h, s, e)

    # keys and values: each chunk takes its own media's m latents (one-to-one when no segment was cut)
    if layout.one_chunk_per_media:
        used = None if layout.unused_media is None else layout.unused_media  # (k,) or None
        k_chunks = regroup_rows(k.flatten(0, 1), layout.chunk_media, layout.media_chunk, zero_grad=used)  # (c, m, h*e)
        v_chunks = regroup_rows(v.flatten(0, 1), layout.chunk_media, layout.media_chunk, zero_grad=used)  # (c, m, h*e)
    else:  # a media with several chunks: the backward adds their gradients up
        k_chunks = SpreadRows.apply(k.flatten(0, 1), layout.chunk_media)  # (c, m, h*e)
        v_chunks = SpreadRows.apply(v.flatten(0, 1), layout.chunk_media)  # (c, m, h*e)
    k_chunks = rearrange(k_chunks, "c m (h e) -> c h m e", h=heads)  # (c, h, m, e)
    v_chunks = rearrange(v_chunks, "c m (h e) -> c h m e", h=heads)  # (c, h, m, e)

    # each chunk attends to its own media alone: no mask, and the NaN contract of `attend` holds per chunk
    out = attend(q_chunks, k_chunks, v_chunks, scale=scale)  # (c, h, s, e)

    # back to text order: each token reads its slot (the backward gives padding slots a zero gradient)
    out_slots = rearrange(out, "c h s e -> (c s) (h e)")  # (c*s, h*e)
    out_tokens = regroup_rows(  # (b*n, h*e): text that sees nothing is exactly 0
        out_slots, token_slot, slot_token, zero_out=layout.blind_tokens, zero_grad=layout.padding_slots
    )
    return out_tokens.view(b, n, inner)  # (b, n, h*e)
