"""My Flamingo: the modules I wrote in the flamingo_lite course, one section per lesson cell.

Written by the `%%my_flamingo` cells of the lessons: each section is a cell as it last ran without an error, and
running that cell again replaces its section. A header ending in "(failed its check: ...)" is a cell whose check
failed when it last ran: later lessons say so, and use flamingo_lite's version in its place where there is one.
One ending in "(changed since its check passed: ...)" holds code its check has not run on: later lessons say so.
It needs only torch and einops:

    from my_flamingo import MyPerceiverResampler, MyGatedCrossAttentionBlock
"""
import math

import torch
import torch.nn.functional as F
from einops import einsum, rearrange, repeat
from torch import nn


# === lesson 02: project ===
def project(layer, x, latents):
    """x (b, t, n, d), latents (b, t, L, d) -> q (b, t, L, h*e), k, v (b, t, n+L, h*e)."""
    x = layer.norm_media(x)  # (b, t, n, d)
    latents = layer.norm_latents(latents)  # (b, t, L, d)
    q = layer.to_q(latents)  # (b, t, L, h*e)
    kv_input = torch.cat((x, latents), dim=-2)  # (b, t, n+L, d): the twist
    k, v = layer.to_kv(kv_input).chunk(2, dim=-1)  # 2 x (b, t, n+L, h*e)
    return q, k, v


# === lesson 02: attend_latents ===
def attend_latents(layer, q, k, v):
    """q (b, t, L, h*e), k, v (b, t, n+L, h*e) -> (b, t, L, h*e): every latent's weighted sum of the values."""
    q = rearrange(q, "b t L (h e) -> b t h L e", h=layer.heads)  # (b, t, h, L, e)
    k = rearrange(k, "b t j (h e) -> b t h j e", h=layer.heads)  # (b, t, h, n+L, e)
    v = rearrange(v, "b t j (h e) -> b t h j e", h=layer.heads)  # (b, t, h, n+L, e)
    scores = torch.einsum("b t h i e, b t h j e -> b t h i j", q, k) * layer.scale  # (b, t, h, L, n+L)
    attn = scores.softmax(dim=-1)  # (b, t, h, L, n+L): over the keys
    out = torch.einsum("b t h i j, b t h j e -> b t h i e", attn, v)  # (b, t, h, L, e)
    return rearrange(out, "b t h L e -> b t L (h e)")  # (b, t, L, h*e)


# === lesson 02: MyPerceiverAttention ===
class MyPerceiverAttention(nn.Module):
    """Latents (queries) attend to [media features; latents] (keys, values). (b,t,n,d), (b,t,L,d) -> (b,t,L,d)."""

    def __init__(self, *, dim, dim_head=64, heads=8):
        super().__init__()
        self.heads = heads
        self.scale = dim_head**-0.5
        inner = dim_head * heads
        self.norm_media = nn.LayerNorm(dim)
        self.norm_latents = nn.LayerNorm(dim)
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_kv = nn.Linear(dim, inner * 2, bias=False)
        self.to_out = nn.Linear(inner, dim, bias=False)

    def forward(self, x, latents):
        q, k, v = project(self, x, latents)  # (b, t, L, h*e), 2 x (b, t, n+L, h*e)
        return self.to_out(attend_latents(self, q, k, v))  # (b, t, L, d)


# === lesson 03: add_time_embeddings ===
def add_time_embeddings(x, media_pos_emb):
    """x (b, t, n, d) + the first t of media_pos_emb (T, 1, d) -> (b, t, n, d)."""
    t = x.shape[1]
    return x + media_pos_emb[:t]  # (b, t, n, d) + (t, 1, d) -> (b, t, n, d)


# === lesson 03: MyFeedForward ===
class MyFeedForward(nn.Sequential):
    """LayerNorm, widen, GELU, narrow, on each position on its own. (..., dim) -> (..., dim)."""

    def __init__(self, dim, mult=4):
        super().__init__()
        inner = int(dim * mult)
        self.append(nn.LayerNorm(dim))  # 0
        self.append(nn.Linear(dim, inner, bias=False))  # 1: widen
        self.append(nn.GELU())  # 2
        self.append(nn.Linear(inner, dim, bias=False))  # 3: narrow

    def forward(self, x):
        h = self[1](self[0](x))  # (..., inner): normalise, widen
        return self[3](self[2](h))  # (..., dim): GELU, narrow


# === lesson 03: resampler_layers ===
def resampler_layers(layers, x, z):
    """Run the latents z (b, t, L, d) through every [attention, feed-forward] pair, over the features x (b, t, n, d)."""
    for attn, ff in layers:
        z = attn(x, z) + z  # (b, t, L, d): latents read the features (and each other)
        z = ff(z) + z  # (b, t, L, d): each latent thinks on its own
    return z


# === lesson 03: MyPerceiverResampler ===
class MyPerceiverResampler(nn.Module):
    """Any number of visual features per media in, num_latents tokens per media out. (b,[t,]n,d) -> (b,t,L,d)."""

    def __init__(self, *, dim, depth, dim_head=64, heads=8, num_latents=64, num_media_embeds=4, ff_mult=4,
                 media_embedding="per_media"):
        super().__init__()
        if media_embedding not in ("per_media", "none"):
            raise ValueError(f"media_embedding must be 'per_media' or 'none', got {media_embedding!r}")
        self.media_embedding = media_embedding
        self.latents = nn.Parameter(torch.randn(num_latents, dim))  # (L, d)
        if media_embedding == "per_media":  # flamingo-pytorch's: one embedding per media
            self.media_pos_emb = nn.Parameter(torch.randn(num_media_embeds, 1, dim))  # (T, 1, d)
        self.layers = nn.ModuleList()  # depth x [attention, feed-forward]
        for _ in range(depth):
            attn = MyPerceiverAttention(dim=dim, dim_head=dim_head, heads=heads)  # lesson 02's, yours
            ff = MyFeedForward(dim, mult=ff_mult)
            self.layers.append(nn.ModuleList([attn, ff]))
        self.norm = nn.LayerNorm(dim)

    def forward(self, x):
        if x.ndim == 3:
            x = rearrange(x, "b n d -> b 1 n d")  # (b, 1, n, d): one media
        b, t = x.shape[:2]
        if self.media_embedding == "per_media":
            x = add_time_embeddings(x, self.media_pos_emb)  # (b, t, n, d)
        z = repeat(self.latents, "L d -> b t L d", b=b, t=t)  # (b, t, L, d)
        z = resampler_layers(self.layers, x, z)  # (b, t, L, d)
        return self.norm(z)  # (b, t, L, d)


# === lesson 04: my_text_time ===
def my_text_time(media_locations):
    """(b, n) bool -> (b, n) long: how many <image> markers are at or before each token."""
    return media_locations.long().cumsum(dim=-1)  # (b, n)


# === lesson 04: my_text_to_media_mask ===
def my_text_to_media_mask(text_time, num_media, only_attend_immediate_media):
    """(b, n) text time -> (b, n, t) bool: True where a token may look at image 1..t."""
    media_time = torch.arange(1, num_media + 1, device=text_time.device)  # (t,) = [1, 2, ...]
    tt = rearrange(text_time, "b n -> b n 1")  # (b, n, 1)
    mt = rearrange(media_time, "t -> 1 1 t")  # (1, 1, t)
    return (tt == mt) if only_attend_immediate_media else (tt >= mt)  # (b, n, t)


# === lesson 04: my_cross_attention_mask ===
def my_cross_attention_mask(media_locations, num_media, num_latents, only_attend_immediate_media=True):
    """(b, n) bool -> (b, n, t*m) bool, True = this token may attend to this media latent."""
    per_media = my_text_to_media_mask(my_text_time(media_locations), num_media, only_attend_immediate_media)  # (b, n, t)
    return repeat(per_media, "b n t -> b n (t m)", m=num_latents)  # (b, n, t*m)


# === lesson 05: masked_softmax ===
def masked_softmax(scores, mask):
    """softmax(scores) over the last axis, only where mask is True; all-False rows give zeros."""
    empty = ~mask.any(dim=-1, keepdim=True)  # (..., 1): rows that see nothing
    filled = scores.masked_fill(~mask, float("-inf")).masked_fill(empty, 0.0)  # no all -inf row
    return filled.softmax(dim=-1).masked_fill(empty, 0.0)


# === lesson 05: MyMaskedCrossAttention ===
class MyMaskedCrossAttention(nn.Module):
    """Text (queries) attends to media latents (keys, values) under the media_locations mask."""

    def __init__(self, *, dim, dim_head=64, heads=8, only_attend_immediate_media=True):
        super().__init__()
        self.heads = heads
        self.scale = dim_head**-0.5
        inner = dim_head * heads
        self.norm = nn.LayerNorm(dim)
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_kv = nn.Linear(dim, inner * 2, bias=False)
        self.to_out = nn.Linear(inner, dim, bias=False)
        self.only_attend_immediate_media = only_attend_immediate_media

    def forward(self, x, media, media_locations=None):
        b, t, m = media.shape[:3]
        q = rearrange(self.to_q(self.norm(x)), "b n (h e) -> b h n e", h=self.heads)  # (b, h, n, e)
        k, v = self.to_kv(rearrange(media, "b t m d -> b (t m) d")).chunk(2, dim=-1)  # 2 x (b, t*m, h*e)
        k = rearrange(k, "b j (h e) -> b h j e", h=self.heads)  # (b, h, t*m, e)
        v = rearrange(v, "b j (h e) -> b h j e", h=self.heads)  # (b, h, t*m, e)
        sim = torch.einsum("b h i e, b h j e -> b h i j", q, k) * self.scale  # (b, h, n, t*m)
        if media_locations is None:
            attn = sim.softmax(dim=-1)  # (b, h, n, t*m): no mask
        else:
            mask = my_cross_attention_mask(media_locations, t, m, self.only_attend_immediate_media)  # (b, n, t*m)
            attn = masked_softmax(sim, rearrange(mask, "b i j -> b 1 i j"))  # (b, h, n, t*m)
        out = torch.einsum("b h i j, b h j e -> b h i e", attn, v)  # (b, h, n, e)
        return self.to_out(rearrange(out, "b h n e -> b n (h e)"))  # (b, n, d)


# === lesson 06: MyGatedCrossAttentionBlock ===
class MyGatedCrossAttentionBlock(nn.Module):
    """x + tanh(attn_gate) * xattn(x, media), then + tanh(ff_gate) * ff(.)."""

    def __init__(self, *, dim, dim_head=64, heads=8, ff_mult=4, only_attend_immediate_media=True):
        super().__init__()
        self.attn = MyMaskedCrossAttention(
            dim=dim, dim_head=dim_head, heads=heads, only_attend_immediate_media=only_attend_immediate_media
        )
        self.attn_gate = nn.Parameter(torch.tensor([0.0]))  # (1,): closed at the start
        self.ff = MyFeedForward(dim, mult=ff_mult)
        self.ff_gate = nn.Parameter(torch.tensor([0.0]))  # (1,)

    def forward(self, x, media, media_locations=None):
        # x (b, n, d), media (b, t, m, d), media_locations (b, n) bool -> (b, n, d)
        x = x + self.attn(x, media, media_locations) * self.attn_gate.tanh()  # (b, n, d)
        x = x + self.ff(x) * self.ff_gate.tanh()  # (b, n, d)
        return x


# === lesson 08: xattn_layer_indices ===
def xattn_layer_indices(depth: int, every: int) -> list:
    "LM layer indices with a gated cross-attention block before them."
    return [i for i in range(depth) if i % every == 0]


# === lesson 08: Resampler, GatedBlock, MyFlamingo ===
Resampler = MyPerceiverResampler  # yours, lesson 03
GatedBlock = MyGatedCrossAttentionBlock  # yours, lesson 06


class MyFlamingo(nn.Module):
    def __init__(self, config, *, lm, vision):
        super().__init__()
        self.config = config
        self.vision = vision.requires_grad_(False).eval()  # pretrained, frozen: no gradients, eval mode
        self.lm = lm.requires_grad_(False).eval()  # pretrained, frozen
        self.resampler = Resampler(
            dim=config.dim, depth=config.resampler_depth, dim_head=config.dim_head, heads=config.heads,
            num_latents=config.num_latents, num_media_embeds=config.num_media_embeds, ff_mult=config.ff_mult,
            media_embedding=config.media_embedding,
        )
        self.xattn_layers = xattn_layer_indices(len(lm.blocks), config.cross_attn_every)
        self.xattn = nn.ModuleDict({
            str(i): GatedBlock(dim=config.dim, dim_head=config.dim_head, heads=config.heads, ff_mult=config.ff_mult,
                               only_attend_immediate_media=config.only_attend_immediate_media)
            for i in self.xattn_layers
        })

    def forward(self, tokens, images):
        # tokens (b, n) long, images (b, t, 3, H, W) -> logits (b, n, V)
        media = self.resampler(self.vision(images))  # (b, t, L, d): frozen eye, trained resampler
        media_locations = tokens == self.config.media_token_id  # (b, n): True at every <image>
        x = self.lm.embed(tokens)  # (b, n, d)
        for i, lm_block in enumerate(self.lm.blocks):
            if i in self.xattn_layers:
                x = self.xattn[str(i)](x, media, media_locations)  # (b, n, d): look at the pictures, gated
            x = lm_block(x)  # (b, n, d): the frozen LM layer, unchanged
        return self.lm.head(x)  # (b, n, V)

    def train(self, mode=True):
        # model.train() reaches every submodule: put the frozen parts back in eval mode
        super().train(mode)
        self.vision.eval()
        self.lm.eval()
        return self


# === lesson 09: next_token_loss ===
def next_token_loss(logits: torch.Tensor, tokens: torch.Tensor, pad_id: int = 0) -> torch.Tensor:
    "logits (b, n, V), tokens (b, n) -> the mean cross-entropy of every real next token, a scalar."
    predictions = logits[:, :-1]  # (b, n-1, V): the prediction made at each position ...
    targets = tokens[:, 1:]  # (b, n-1): ... is scored against the next token
    return F.cross_entropy(predictions.reshape(-1, predictions.shape[-1]), targets.reshape(-1), ignore_index=pad_id)


# === lesson 09: freeze_pretrained ===
def freeze_pretrained(model):
    "Freeze model.vision and model.lm in place; return the model."
    model.vision.requires_grad_(False)
    model.lm.requires_grad_(False)
    return model


# === lesson 09: parameter_groups ===
def parameter_groups(model, *, lr, gate_lr, weight_decay) -> list:
    "AdamW parameter groups: the gates at gate_lr without weight decay, the other trainable weights with it."
    gates = [p for n, p in model.named_parameters() if p.requires_grad and n.endswith("_gate")]
    others = [p for n, p in model.named_parameters() if p.requires_grad and not n.endswith("_gate")]
    return [{"params": others, "weight_decay": weight_decay}, {"params": gates, "lr": gate_lr, "weight_decay": 0.0}]


# === lesson 09: train_flamingo ===
def train_flamingo(model, data, *, steps, batch_size, lr, gate_lr, weight_decay, log_every, seed) -> dict:
    "Train the resampler and the gated blocks of `model` on `data`; return the history (step, loss, gates)."
    freeze_pretrained(model).train()
    optimizer = torch.optim.AdamW(parameter_groups(model, lr=lr, gate_lr=gate_lr, weight_decay=weight_decay), lr=lr)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(s / steps, 1.0))))
    generator = torch.Generator().manual_seed(seed)
    device = next(model.parameters()).device
    history = {"step": [], "loss": [], "attn_gate_tanh": [], "ff_gate_tanh": [], "loss_every_step": []}

    def log(step, loss):
        blocks = [model.xattn[str(i)] for i in model.xattn_layers]
        history["step"].append(step)
        history["loss"].append(loss)
        history["attn_gate_tanh"].append([float(b.attn_gate.detach().tanh()) for b in blocks])
        history["ff_gate_tanh"].append([float(b.ff_gate.detach().tanh()) for b in blocks])

    queue = []
    for step in range(steps):
        if not queue:  # a new epoch: a shuffled order, cut into whole batches
            order = torch.randperm(len(data), generator=generator)  # (N,)
            queue = list(order[: len(data) - len(data) % batch_size].split(batch_size))
        part = data[queue.pop(0)].to(device)
        logits = model(part.tokens, part.images)  # (B, n, V)
        loss = next_token_loss(logits, part.tokens)  # ()
        if step == 0:
            log(0, loss.item())  # before any update: every gate is 0
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
        history["loss_every_step"].append(loss.item())
        if (step + 1) % log_every == 0 or step + 1 == steps:
            log(step + 1, loss.item())
    model.eval()
    return history


# === lesson 09: greedy_decode ===
@torch.no_grad()
def greedy_decode(model, prompt, images, *, eoc_id, max_new_tokens=5) -> list:
    "prompt (n,) long, images (t, 3, H, W) -> the new token ids, greedily, up to and including <eoc>."
    ids, new = prompt.clone(), []
    for _ in range(max_new_tokens):
        logits = model(ids[None], images[None])  # (1, n, V)
        next_id = int(logits[0, -1].argmax())
        new.append(next_id)
        ids = torch.cat([ids, torch.tensor([next_id], device=ids.device)])  # (n+1,)
        if next_id == eoc_id:
            break
    return new
