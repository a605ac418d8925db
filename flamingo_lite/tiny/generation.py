"""Text generation for the tiny Flamingo: greedy and beam search, with the media and the prefix cached.

Writing a caption one token at a time, the model without a cache redoes everything for every new token: it
encodes the pictures again and runs the whole sequence through every layer. Two things never change between
steps and are kept here:

* the **media**: the pictures are encoded (vision encoder + resampler) once, as OpenFlamingo's
  `use_cached_media`; every later token comes after the last `<image>` of the prompt, so its cross-attention sees
  the last media (immediate mode) or all of them (all-previous mode), with no mask at all;
* the **keys and values** of the language model's self-attention for the tokens already read (a KV cache): each new
  token computes its own query, key and value and attends to the stored ones. The gated blocks need no cache, since
  cross-attention looks at the media, not at earlier text.

Both decoders give the same logits (to 1e-5, tested), so greedy and beam search write the same text with or without
the cache; `benchmarks/generation.py` measures the speed. The model never writes `<image>` (there is no picture for
it); generation stops when every beam has written `<eoc>`.

Shapes: b batch (or beams), n tokens, s new tokens, t media, L latents, d width, h heads, e head width, V vocabulary.
"""
from __future__ import annotations

import torch
from einops import rearrange

from .language_model import causal_attention
from .model import Flamingo


class UncachedDecoder:
    """Next-token logits by re-running `Flamingo.forward` on the whole sequence, pictures included, at every step."""

    def __init__(self, model: Flamingo, images: torch.Tensor):
        self.model, self.images, self.tokens = model, images, None

    def prefill(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens (b, n) -> logits of the next token (b, V)."""
        self.tokens = tokens
        return self.model(tokens, self.images)[:, -1]  # (b, V)

    def step(self, new: torch.Tensor) -> torch.Tensor:
        """new tokens (b, 1) -> logits of the token after them (b, V)."""
        self.tokens = torch.cat((self.tokens, new), dim=1)  # (b, n+1)
        return self.model(self.tokens, self.images)[:, -1]  # (b, V)

    def reorder(self, rows: torch.Tensor) -> None:
        """Keep rows `rows` (beam search), each as often as it is listed."""
        self.tokens, self.images = self.tokens[rows], self.images[rows]


class CachedDecoder:
    """Next-token logits from cached media and a KV cache of the language model's self-attention."""

    def __init__(self, model: Flamingo, images: torch.Tensor):
        self.model = model
        self.media = model.encode_images(images)  # (b, t, L, d): encoded once
        self.cache: list = []  # per LM layer: (keys, values), each (b, h, n, e)
        self.seen_media = None  # (b, t', L, d): the media every later token sees
        self.sees_nothing = False  # a prompt without pictures: later tokens see none
        self.length = 0

    def prefill(self, tokens: torch.Tensor) -> torch.Tensor:
        model = self.model
        media_locations = tokens == model.config.media_token_id  # (b, n) bool
        count = int(media_locations.sum(dim=1).max())
        if bool((media_locations.sum(dim=1) != count).any()):
            raise ValueError("cached generation needs the same number of <image> tokens in every prompt row")
        self.cache = [None] * len(model.lm.blocks)
        self.shift_cache = [None] * len(model.lm.blocks)  # per LM layer: the last ln_1 rows the token shift needs
        logits = self._run(tokens, self.media, media_locations)  # (b, n, V)
        self.sees_nothing = count == 0
        if count == 0 or not model.config.only_attend_immediate_media:
            self.seen_media = self.media[:, : max(count, 1)]  # every picture so far (or one, masked out)
        else:
            self.seen_media = self.media[:, count - 1 : count]  # the last picture
        return logits[:, -1]  # (b, V)

    def step(self, new: torch.Tensor) -> torch.Tensor:
        # no mask: every new token sees all of seen_media; all-False markers when the prompt had no picture
        media_locations = torch.zeros(new.shape, dtype=torch.bool, device=new.device) if self.sees_nothing else None
        return self._run(new, self.seen_media, media_locations)[:, -1]  # (b, V)

    def reorder(self, rows: torch.Tensor) -> None:
        self.cache = [(k[rows], v[rows]) for k, v in self.cache]
        self.shift_cache = [None if h is None else h[rows] for h in self.shift_cache]
        self.media, self.seen_media = self.media[rows], self.seen_media[rows]

    def _run(self, tokens: torch.Tensor, media: torch.Tensor, media_locations) -> torch.Tensor:
        """The new tokens (b, s) through the model, reading and extending the cache: logits (b, s, V)."""
        lm, s = self.model.lm, tokens.shape[1]
        if self.length + s > lm.config.max_len:
            raise ValueError(f"the sequence would have {self.length + s} tokens but the LM's max_len is {lm.config.max_len}")
        x = lm.embed(tokens, start=self.length)  # (b, s, d)
        for i, block in enumerate(lm.blocks):
            if str(i) in self.model.xattn:
                x = self.model.xattn[str(i)](x, media, media_locations)  # (b, s, d)
            x = self._block(i, block, x)  # (b, s, d)
        self.length += s
        return lm.head(x)  # (b, s, V)

    def _block(self, i: int, block, x: torch.Tensor) -> torch.Tensor:
        """One LM block on the new tokens, with the stored keys and values of the earlier ones."""
        attn = block.attn
        h = block.ln_1(x)  # (b, s, d)
        if hasattr(block, "shift"):  # the token shift reads the width-1 positions before the new ones: keep them
            before = self.shift_cache[i]
            h_all = h if before is None else torch.cat((before, h), dim=1)  # (b, <=w-1+s, d)
            self.shift_cache[i] = h_all[:, -(block.shift.width - 1) :] if block.shift.width > 1 else h_all[:, :0]
            h = block.shift(h_all)[:, -h.shape[1] :]  # (b, s, d): zeros before position 0, as in the full forward
        q, k, v = attn.to_qkv(h).chunk(3, dim=-1)  # 3 x (b, s, d)
        q, k, v = (rearrange(z, "b s (h e) -> b h s e", h=attn.heads) for z in (q, k, v))  # 3 x (b, h, s, e)
        past = self.cache[i]
        if past is not None:
            k, v = torch.cat((past[0], k), dim=2), torch.cat((past[1], v), dim=2)  # (b, h, P+s, e)
        self.cache[i] = (k, v)
        out = causal_attention(q, k, v)  # (b, h, s, e): new token j, at position P+j, sees every key up to P+j
        x = x + attn.to_out(rearrange(out, "b h s e -> b s (h e)"))  # (b, s, d)
        return x + block.mlp(block.ln_2(x))  # (b, s, d)


@torch.inference_mode()
def generate(
    model: Flamingo,
    tokens: torch.Tensor,
    images: torch.Tensor,
    *,
    max_new_tokens: int,
    eoc_id: int | None,
    num_beams: int = 1,
    use_cache: bool = True,
) -> torch.Tensor:
    """Continue each prompt: tokens (b, n) long, images (b, t, 3, H, W) -> the prompts and their continuations (b, n+s).

    num_beams=1 is greedy search; more keeps that many continuations per prompt, scored by their summed
    log-probabilities. Stops after `max_new_tokens`, or when every beam of every prompt has written `eoc_id` (None:
    never stops early). The prompts are continued side by side, each as it would be alone; a row is cut after its
    first `eoc_id`, and one that ends before the longest is filled with `eoc_id`, so `out[:, n:]` reads up to the
    first `eoc_id` of each row. use_cache=False recomputes everything at every step (the same result, slower).
    """
    tokens = model.lm.check_tokens(tokens)
    if not isinstance(images, torch.Tensor) or images.shape[:1] != tokens.shape[:1]:
        raise ValueError(f"generate needs one row of pictures per prompt: tokens {tuple(tokens.shape)} and images "
                         f"{tuple(getattr(images, 'shape', ()))} must have the same batch size")
    if not isinstance(num_beams, int) or num_beams < 1:
        raise ValueError(f"num_beams must be a positive int, got {num_beams!r}")
    if tokens.shape[1] + max_new_tokens > model.lm.config.max_len:
        raise ValueError(
            f"prompt of {tokens.shape[1]} tokens + max_new_tokens={max_new_tokens} exceeds the LM's max_len={model.lm.config.max_len}"
        )
    was_training = model.training
    model.eval()
    decoder = (CachedDecoder if use_cache else UncachedDecoder)(model, images)
    logits = decoder.prefill(tokens)  # (b, V)
    b, n = tokens.shape
    first_row = torch.arange(b, device=tokens.device)[:, None]  # (b, 1): prompt p's beams are rows p*B .. p*B+B-1
    beams = tokens  # (b*B, n'), B = 1 until the first step
    scores = torch.zeros(b, 1, device=tokens.device)  # (b, B)
    for written in range(max_new_tokens):
        logprobs = _next_logprobs(logits, model.config.media_token_id)  # (b*B, V)
        if eoc_id is not None:
            done = beams[:, -1] == eoc_id  # (b*B,) a finished beam only carries itself forward, unchanged
            logprobs[done] = float("-inf")
            logprobs[done, eoc_id] = 0.0
            if bool(done.all()) and beams.shape[1] > n:
                break
        vocab, kept = logprobs.shape[1], scores.shape[1]
        total = (scores[:, :, None] + logprobs.view(b, kept, vocab)).flatten(1)  # (b, B*V): each prompt's own
        scores, flat = total.topk(min(num_beams, total.shape[1]), dim=1)  # (b, B'), (b, B')
        rows = (first_row * kept + flat // vocab).flatten()  # (b*B',): the beam each new one extends
        next_ids = (flat % vocab).flatten()  # (b*B',)
        beams = torch.cat((beams[rows], next_ids[:, None]), dim=1)  # (b*B', n'+1)
        if num_beams > 1:  # greedy keeps its rows as they are
            decoder.reorder(rows)
        if written == max_new_tokens - 1 or (eoc_id is not None and bool((next_ids == eoc_id).all())):
            break
        logits = decoder.step(next_ids[:, None])  # (b*B', V)
    model.train(was_training)
    best = beams.view(b, scores.shape[1], -1)[first_row[:, 0], scores.argmax(dim=1)]  # (b, n+s): each prompt's best beam
    if eoc_id is not None:  # a finished beam wrote only <eoc> after its first one: keep the longest row's end
        before_end = (best[:, n:] == eoc_id).int().cumsum(dim=1) == 0  # (b, s): new tokens before a row's first <eoc>
        width = min(int(before_end.sum(dim=1).max()) + 1, best.shape[1] - n)  # its first <eoc> included
        best = best[:, : n + width]  # (b, n+width)
    return best  # (b, n+s)


def _next_logprobs(logits: torch.Tensor, media_token_id: int) -> torch.Tensor:
    """Log-probabilities of the next token, (B, V), with `<image>` ruled out (no picture would come with it)."""
    logits = logits.float().clone()  # (B, V)
    logits[:, media_token_id] = float("-inf")
    return logits.log_softmax(dim=-1)  # (B, V)
