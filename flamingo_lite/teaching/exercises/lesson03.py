"""Lesson 03's checks: PerceiverResampler in three steps (the time embeddings, the residual layers, the whole
forward with its final norm), and the two exercises (video resampling, counting the parameters)."""
from __future__ import annotations

import copy

import torch
from einops import rearrange, repeat

import flamingo_lite as fl

from . import (ExerciseFailed, Mistake, check_layer, check_parameter_names, check_shapes_follow, compare, fail, passed,
               register_hints, register_nudges, run_learner, run_untouched, keep_rng, refuse_the_answer)

register_hints({
    "03.embed": "media_pos_emb[:t] has shape (t, 1, d): adding it to x (b, t, n, d) broadcasts embedding i onto "
    "every feature of media i, in every sample. t = x.shape[1].",
    "03.layers": "for attn, ff in layers: z = attn(x, z) + z, then z = ff(z) + z. Each block computes an update; "
    "the residual adds it to what z already was.",
    "03.feedforward": "In __init__, after super().__init__(): inner = int(dim * mult), then self.append(...) four "
    "times: nn.LayerNorm(dim), nn.Linear(dim, inner, bias=False), nn.GELU(), nn.Linear(inner, dim, bias=False). In "
    "forward, run them in order: self[3](self[2](self[1](self[0](x)))).",
    "03.init": "After super().__init__(): self.latents = nn.Parameter(torch.randn(num_latents, dim)), "
    "self.media_embedding = media_embedding (a ValueError naming it unless it is \"per_media\" or \"none\"); only "
    "when it is \"per_media\", self.media_pos_emb = nn.Parameter(torch.randn(num_media_embeds, 1, dim)); "
    "self.layers = nn.ModuleList() with "
    "depth times self.layers.append(nn.ModuleList([MyPerceiverAttention(dim=dim, dim_head=dim_head, heads=heads), "
    "MyFeedForward(dim, mult=ff_mult)])), and self.norm = nn.LayerNorm(dim).",
    "03.forward": "A (b, n, d) input is one media: rearrange it to (b, 1, n, d). Then, with per-media embeddings, "
    "x = add_time_embeddings(x, self.media_pos_emb); z = repeat(self.latents, 'L d -> b t L d', b=b, t=t), z = resampler_layers(self.layers, "
    "x, z), and return self.norm(z).",
    "03.video": "Add media_pos_emb[:T] to the frames first (that is what the embeddings are for in the paper), then "
    "flatten the frames into one media, 'b T S d -> b 1 (T S) d', and run the latents over it as forward does.",
    "03.count": "A LayerNorm of width d has 2d parameters; a Linear(a, b, bias=False) has a*b. An attention has two "
    "LayerNorms, to_q (d -> h*e), to_kv (d -> 2*h*e) and to_out (h*e -> d); a feed-forward a LayerNorm and two "
    "linears through int(d*ff_mult) hidden units. Add the latents, the time embeddings and the final norm.",
})
register_nudges({  # a first hint where the full one is the answer: hint(key), then hint(key, 2)
    "03.init": "Four things live on the resampler: the learned latents (num_latents rows of width dim, random so "
    "that they start apart), the time embeddings (only with media_embedding=\"per_media\", one per media), "
    "depth layers that are each a pair [your PerceiverAttention, your FeedForward], and a final "
    "LayerNorm. Check media_embedding before building anything.",
    "03.forward": "Read the forward off the pseudo-code of the paper's Fig. 5 (App. A.1.1): add the time embeddings, give every media of "
    "every sample its own copy of the latents, run your layers, normalise. A (b, n, d) input is a batch "
    "of single media: give it a media axis first.",
    "03.feedforward": "Four layers in an nn.Sequential, in the spec's order: a LayerNorm, a bias-free Linear that widens by"
    " mult, GELU, a bias-free Linear back to dim.",
    "03.count": "Count what each part holds: the latents, the time embeddings (only with media_embedding=\"per_media\"), "
    "depth times one attention and one feed-forward, and the final norm. The exercise lists the layers inside each.",
})


def reference_embed(x, media_pos_emb, *, mode="right"):
    t = x.shape[1]
    if mode == "forgotten":
        return x
    if mode == "first":
        return x + media_pos_emb[:1]  # every media gets embedding 0
    if mode == "from 1":
        return x + media_pos_emb[1 : t + 1]  # media numbered from 1 into a 0-based table
    return x + media_pos_emb[:t]  # (b, t, n, d)


def _name_batch_slice(add_time_embeddings, x, table, what) -> None:
    """Fail naming a slice by the batch size: it raises for 2 samples of 3 media, and is right when they are equal."""
    try:
        add_time_embeddings(x.clone(), table.clone())  # (b, t, n, d)
    except Exception:  # noqa: BLE001 - it raises here: see whether equal sizes make it right
        pass
    else:
        return  # it failed otherwise (an input changed in place): the caller's verdict stands
    square = torch.randn(3, 3, 5, 8, generator=torch.Generator().manual_seed(1))  # (b, t, n, d) with b = t
    try:
        got = add_time_embeddings(square.clone(), table.clone())  # (b, t, n, d)
    except Exception:  # noqa: BLE001 - another mistake: the caller reports the first error
        return
    if isinstance(got, torch.Tensor) and got.shape == square.shape and torch.allclose(got, reference_embed(square, table), atol=1e-6):
        fail(f"{what} takes as many embeddings as there are samples: it is right when the batch has as many samples "
             "as media and raises otherwise. x is (b, t, n, d): the number of media is t = x.shape[1], not "
             "x.shape[0] or len(x), the batch size.")


def check_time_embeddings(add_time_embeddings) -> None:
    """Step 03.embed: `add_time_embeddings(x, media_pos_emb)`, (b, t, n, d) + (T, 1, d) -> (b, t, n, d)."""
    g = torch.Generator().manual_seed(0)
    x, table = torch.randn(2, 3, 5, 8, generator=g), torch.randn(4, 1, 8, generator=g)  # (b, t, n, d), (T, 1, d)
    what = "your add_time_embeddings(x, media_pos_emb)"
    try:
        sizes = (f"x is (b, t, n, d) = {tuple(x.shape)} and media_pos_emb (T, 1, d) = {tuple(table.shape)}, one row "
                 "per media it can number: take the first t rows, `media_pos_emb[:t]` (t, 1, d) with t = x.shape[1], "
                 "which broadcasts against x over b and n.")
        got = run_untouched(add_time_embeddings, x, table, what=what, names=("x", "media_pos_emb"),
                            fix="return x + media_pos_emb[:t], a new tensor.", advice={"must match the size": sizes})
    except ExerciseFailed:
        _name_batch_slice(add_time_embeddings, x, table, what)
        raise
    compare(got, reference_embed(x, table), what=what, mistakes=[
        Mistake("time embeddings forgotten", reference_embed(x, table, mode="forgotten"),
                "nothing was added: the time embeddings are forgotten; add media_pos_emb[:t]."),
        Mistake("one embedding for all", reference_embed(x, table, mode="first"),
                "every media got embedding 0: media i needs embedding i, media_pos_emb[:t]."),
        Mistake("media numbered from 1", reference_embed(x, table, mode="from 1"),
                "media 0 got embedding 1: the table is indexed from 0, media_pos_emb[:t], not [1:t+1]."),
    ])
    for t in (1, 4):  # other numbers of media: a slice fixed at the example's 3 fails here
        x = torch.randn(2, t, 5, 8, generator=g)  # (b, t, n, d)
        try:
            got = add_time_embeddings(x.clone(), table.clone())  # (b, t, n, d): copies, as above
        except Exception as err:  # noqa: BLE001 - any error the learner's code raises is reported, named
            fail(f"{what} is right for 3 media but raised {err.__class__.__name__} for {t}: slice media_pos_emb[:t] "
                 "with t = x.shape[1], not a fixed number.")
        if not isinstance(got, torch.Tensor) or got.shape != x.shape or not torch.allclose(got, reference_embed(x, table), atol=1e-6):
            fail(f"{what} is right for 3 media but not for {t}: slice media_pos_emb[:t] with t = x.shape[1], "
                 "not a fixed number.")
    x, table = torch.randn(2, 3, 5, 8, generator=g), torch.randn(4, 1, 8, generator=g).requires_grad_()
    with torch.enable_grad():
        got = run_learner(add_time_embeddings, x, table, what=what)
        grad = torch.autograd.grad(got.sum(), table, allow_unused=True)[0] if got.requires_grad else None
    if grad is None or not bool(grad[:3].any()):
        fail(f"{what} is right, but no gradient reaches media_pos_emb, so the embeddings would never train: add "
             "media_pos_emb[:t] itself, with no .detach() or torch.no_grad().")
    passed("add_time_embeddings is right: media i got embedding i on every feature.")


def _feedforward_mistakes(reference, x):
    norm, widen, _, narrow = reference
    gelu = torch.nn.functional.gelu
    return [
        Mistake("no LayerNorm", narrow(gelu(widen(x))),
                "the input is not normalised: the first layer, self[0], is nn.LayerNorm(dim), run before widening."),
        Mistake("ReLU", narrow(torch.relu(widen(norm(x)))),
                "this is ReLU: use nn.GELU() between the two linear layers, as fl.FeedForward and flamingo-pytorch do."),
        Mistake("squared ReLU", narrow(torch.relu(widen(norm(x))).square()),
                "this is the paper's Squared ReLU (Table 4): here use nn.GELU(), so that the reference's weights give "
                "the reference's numbers."),
        Mistake("tanh GELU", narrow(gelu(widen(norm(x)), approximate="tanh")),
                "this is the tanh approximation of GELU: use nn.GELU() with its default (exact) form."),
        Mistake("no activation", narrow(widen(norm(x))),
                "there is no non-linearity between the two linear layers: put nn.GELU() between them."),
        Mistake("residual inside", x + narrow(gelu(widen(norm(x)))),
                "the block adds its input back (a residual inside it): return only the update, "
                "self[3](self[2](self[1](self[0](x)))); the residual is added in the layers loop, z = ff(z) + z."),
        Mistake("LayerNorm last", norm(narrow(gelu(widen(x)))),
                "the LayerNorm is applied last: normalise the input first, self[0](x), then widen, GELU and narrow."),
    ]


def _check_layer_order(learner, reference, what) -> None:
    """The four layers in their places: the checker would otherwise build its reference from the learner's shapes
    and report sizes that follow from the mistake."""
    children = list(learner.children())
    if not any(isinstance(child, torch.nn.LayerNorm) for child in children):
        fail(f"{what} has no LayerNorm: the block starts with one, self[0] = nn.LayerNorm(dim), then the widening "
             "Linear, GELU and the narrowing Linear (four layers, the LayerNorm's weights are '0.weight' and '0.bias').")
    norm_last = len(children) == 4 and isinstance(children[-1], torch.nn.LayerNorm)
    if norm_last and not isinstance(children[0], torch.nn.LayerNorm):
        fail(f"{what}: the LayerNorm is appended last: it comes first, self[0] = nn.LayerNorm(dim), so the block "
             "normalises its input before widening.")
    theirs = {name: tuple(p.shape) for name, p in learner.state_dict().items()}
    widen, narrow = tuple(reference[1].weight.shape), tuple(reference[3].weight.shape)  # (inner, dim), (dim, inner)
    if theirs.get("1.weight") == narrow and theirs.get("3.weight") == widen:
        fail(f"{what}: the two Linear layers are the wrong way round: self[1] widens, nn.Linear(dim, inner), and "
             "self[3] narrows back, nn.Linear(inner, dim).")


def check_feedforward(feedforward_cls) -> None:
    """Step 03.feedforward: `MyFeedForward(dim, mult)`, constructor and forward, against fl.FeedForward."""
    refuse_the_answer(feedforward_cls, (fl.FeedForward,))
    learner = run_learner(feedforward_cls, 16, mult=2, what=f"{feedforward_cls.__name__}(16, mult=2)")
    what = f"your {feedforward_cls.__name__}"
    with torch.random.fork_rng(devices=[]):  # the reference's random weights leave the lesson's draws as they were
        reference = fl.FeedForward(16, mult=2)
    _check_layer_order(learner, reference, what)
    x = (torch.randn(2, 3, 5, 16, generator=torch.Generator().manual_seed(4)),)  # (b, t, L, d)
    check_layer(learner, fl.FeedForward, x, what=what, mistakes=_feedforward_mistakes)
    check_shapes_follow(learner, reference, f"{feedforward_cls.__name__}(16, mult=2)",
                         "the hidden width is int(dim * mult): use the mult argument, not a fixed 4.")
    call = f"{feedforward_cls.__name__}(16, mult=2.5)"  # a mult that is not a whole number: int(dim * mult) = 40
    with torch.random.fork_rng(devices=[]):
        learner = run_learner(feedforward_cls, 16, mult=2.5, what=call,
                              advice={"float": "the hidden width must be a whole number: `int(dim * mult)`."})
        reference = fl.FeedForward(16, mult=2.5)
    check_shapes_follow(learner, reference, call, "the hidden width is int(dim * mult), 40 here: multiply first, then "
                        "take int() (`dim * int(mult)` gives 32).")


def reference_layers(layers, x, z, *, attn_residual=True, ff_residual=True, parallel=False, x_becomes=None):
    """The layers as the paper runs them; the keywords give the usual mistakes. x_becomes: "z" (the next layer
    reads the latents as its media) or "ff" (the media go through the feed-forward too)."""
    for attn, ff in layers:
        if parallel:  # both blocks read the same z
            z = attn(x, z) + ff(z) + z  # (b, t, L, d)
            continue
        z = attn(x, z) + z if attn_residual else attn(x, z)  # (b, t, L, d)
        z = ff(z) + z if ff_residual else ff(z)  # (b, t, L, d)
        if x_becomes == "z":
            x = z  # (b, t, L, d)
        elif x_becomes == "ff":
            x = ff(x) + x  # (b, t, n, d)
    return z


_X_CHANGED = ("x changed between layers ({how}): only the latents z are updated; every layer attends to the same "
              "media features x, the resampler's input.")


_NO_ATTN_RESIDUAL = "the attention's output replaces the latents: add it to them, z = attn(x, z) + z (the residual)."
_NO_FF_RESIDUAL = "the feed-forward's output replaces the latents: add it to them, z = ff(z) + z (the residual)."
_IN_PLACE_Z = ("`z += ...` changes z in place, and z here comes from latents that require grad, as in the module, so "
               "autograd cannot differentiate through it: write z = attn(x, z) + z and z = ff(z) + z, which make a "
               "new z.")


_FIRST_LAYER_AGAIN = ("every pass of the loop ran the first layer, layers[0]: use the layer of each pass, "
                      "`for attn, ff in layers:`, so each of the depth layers runs once.")


def _check_layers_apart(learner, what) -> None:
    """Every layer its own object: `[layer] * depth`, or one layer appended depth times, shares its weights, so the
    reference's weights copied in leave only the last layer's, and the model has one layer's worth to train."""
    first = {}
    for name, p in learner.named_parameters(remove_duplicate=False):
        if id(p) in first:
            fail(f"{what}: {first[id(p)]} and {name} are one and the same parameter: one layer object is used in "
                 "several places ([layer] * depth, or the same layer appended again), so the depth layers share their "
                 "weights. Build a new layer in each pass: `for _ in range(depth): self.layers.append(nn.ModuleList("
                 "[MyPerceiverAttention(...), MyFeedForward(...)]))`.")
        first[id(p)] = name


def check_layers(resampler_layers) -> None:
    """Step 03.layers: `resampler_layers(layers, x, z)`, depth x [attention, feed-forward], both residual.

    z is the learned latents repeated over the batch, as in the module, so an in-place add to it fails here and a
    z that does not reach the output through autograd is named."""
    torch.manual_seed(1)
    layers = fl.PerceiverResampler(dim=16, depth=2, dim_head=4, heads=2, num_latents=3).layers.eval()
    g = torch.Generator().manual_seed(2)
    x, latents = torch.randn(2, 2, 5, 16, generator=g), torch.randn(3, 16, generator=g)  # (b, t, n, d), (L, d)
    what = "your resampler_layers(layers, x, z)"
    latents.requires_grad_(True)
    x.requires_grad_(True)  # the media's gradient trains the time embeddings and everything before
    advice = {"in-place": _IN_PLACE_Z, "inplace": _IN_PLACE_Z}
    with torch.enable_grad():
        z = repeat(latents, "L d -> b t L d", b=2, t=2)  # (b, t, L, d): a view of the latents, as in the module
        calls = []  # the shapes each attention is called with, in order: attn(media, latents)
        record = lambda module, args, kwargs: calls.append([tuple(a.shape) for a in (*args, *kwargs.values())  # noqa: E731
                                                             if isinstance(a, torch.Tensor)])
        hooks = [attn.register_forward_pre_hook(record, with_kwargs=True) for attn, _ in layers]
        error = None
        try:
            got = run_learner(resampler_layers, layers, x, z, what=what, advice=advice)
        except ExerciseFailed as verdict:
            error = verdict
        finally:
            for handle in hooks:
                handle.remove()
    if calls and calls[0][:2] == [tuple(z.shape), tuple(x.shape)]:
        fail(f"{what}: the attention is called with its arguments swapped, attn(z, x): it is attn(x, z), the media x "
             f"{tuple(x.shape)} first (the keys and values come from them and the latents), then the latents z "
             f"{tuple(z.shape)} (the queries).")
    if error is not None:
        raise error
    with torch.no_grad():
        media, z, x = x, z.detach(), x.detach()  # media: the leaf the learner was given; (b, t, L, d), (b, t, n, d)
        compare(got, reference_layers(layers, x, z), what=what, mistakes=[
            Mistake("missing residual (attention)", reference_layers(layers, x, z, attn_residual=False), _NO_ATTN_RESIDUAL),
            Mistake("missing residual (feed-forward)", reference_layers(layers, x, z, ff_residual=False), _NO_FF_RESIDUAL),
            Mistake("no residual at all", reference_layers(layers, x, z, attn_residual=False, ff_residual=False),
                    "neither block is residual: z = attn(x, z) + z and z = ff(z) + z."),
            Mistake("one layer", reference_layers(layers[:1], x, z), "only the first layer ran: loop over every layer."),
            Mistake("layers[0] every time", reference_layers([layers[0]] * len(layers), x, z), _FIRST_LAYER_AGAIN),
            Mistake("in parallel", reference_layers(layers, x, z, parallel=True),
                    "the attention and the feed-forward both read the same z, side by side: run them in turn, "
                    "z = attn(x, z) + z, then z = ff(z) + z on the new z."),
            Mistake("x = z", reference_layers(layers, x, z, x_becomes="z"),
                    _X_CHANGED.format(how="the next layer read the latents as its media, x = z")),
            Mistake("x through ff", reference_layers(layers, x, z, x_becomes="ff"),
                    _X_CHANGED.format(how="the media went through the feed-forward too")),
        ])
    cotangent = torch.randn(got.shape, generator=g)  # (b, t, L, d)
    if got.requires_grad:
        run_learner(lambda: (got * cotangent).sum().backward(), what=f"the backward pass through {what}", advice=advice)
    mine, latents.grad = latents.grad, None
    mine_media, media.grad = media.grad, None
    with torch.enable_grad():
        (reference_layers(layers, media, repeat(latents, "L d -> b t L d", b=2, t=2)) * cotangent).sum().backward()
    for name, given, right, why in (
        ("the latents", mine, latents.grad, "z must reach the output through autograd wherever it is used (no .detach() "
         "or torch.no_grad() on it), or the latents would not train" + ("" if mine is None else " as they should")),
        ("the media x", mine_media, media.grad, "x must reach each attention through autograd (no .detach() or "
         "torch.no_grad() on it), or the time embeddings added to it, and whatever makes the features, would never train"),
    ):
        if given is None or not torch.allclose(given, right, atol=1e-5, rtol=1e-4):
            fail(f"{what} gives {name} {'no' if given is None else 'a wrong'} gradient though its output is right: {why}.")
    passed("resampler_layers is right: two layers, each adding its update to the latents.")


def _resampler_mistakes(reference, x):
    if x.ndim == 3:
        x = rearrange(x, "b n d -> b 1 n d")  # (b, 1, n, d)
    b, t = x.shape[:2]
    z = repeat(reference.latents, "L d -> b t L d", b=b, t=t)  # (b, t, L, d)
    per_media = getattr(reference, "media_embedding", "per_media") == "per_media"
    with_emb = x + reference.media_pos_emb[:t] if per_media else x  # (b, t, n, d)
    forgotten = [Mistake("time embeddings forgotten", reference.norm(reference_layers(reference.layers, x, z)),
                         "the time embeddings are forgotten: add self.media_pos_emb[:t] to x before the layers.")]
    return [
        *(forgotten if per_media else []),
        Mistake("missing final norm", reference_layers(reference.layers, with_emb, z),
                "the final norm is missing: return self.norm(z)."),
        Mistake("layers[0] every time", reference.norm(reference_layers([reference.layers[0]] * len(reference.layers), with_emb, z)),
                _FIRST_LAYER_AGAIN),
        Mistake("missing residual (attention)", reference.norm(reference_layers(reference.layers, with_emb, z, attn_residual=False)),
                _NO_ATTN_RESIDUAL),
        Mistake("missing residual (feed-forward)", reference.norm(reference_layers(reference.layers, with_emb, z, ff_residual=False)),
                _NO_FF_RESIDUAL),
        Mistake("x = z", reference.norm(reference_layers(reference.layers, with_emb, z, x_becomes="z")),
                _X_CHANGED.format(how="the next layer read the latents as its media, x = z")),
        Mistake("x through ff", reference.norm(reference_layers(reference.layers, with_emb, z, x_becomes="ff")),
                _X_CHANGED.format(how="the media went through the feed-forward too")),
    ]


def check_forward(resampler_cls) -> None:
    """Step 03.forward: `MyPerceiverResampler(...)`'s forward, on (b, t, n, d) and on (b, n, d) input."""
    refuse_the_answer(resampler_cls, (fl.PerceiverResampler,))
    kwargs = dict(dim=16, depth=2, dim_head=4, heads=2, num_latents=3)
    learner = run_learner(resampler_cls, **kwargs, what=f"{resampler_cls.__name__}(dim=16, depth=2, ...)")
    what = f"your {resampler_cls.__name__}"
    _check_layers_apart(learner, what)
    _check_latents_start_apart(learner, what)
    _check_depth(learner, kwargs["depth"], f"{resampler_cls.__name__}(dim=16, depth=2, ...)")
    _check_attention_sizes(learner, kwargs, what)
    check_layer(learner, fl.PerceiverResampler, what=what, mistakes=_resampler_mistakes, reference_kwargs=kwargs)
    one = (torch.randn(2, 6, 16, generator=torch.Generator().manual_seed(3)),)  # (b, n, d): one media each
    try:
        check_layer(learner, fl.PerceiverResampler, one, what=f"{what} on a (b, n, d) input", mistakes=_resampler_mistakes,
                    reference_kwargs=kwargs)
    except ExerciseFailed as failed:
        if " raised " not in str(failed):
            raise
        fail(f"{str(failed).rstrip('.')}; a (b, n, d) input is one media per sample: rearrange it to (b, 1, n, d) "
             "first, when x.ndim == 3.")
    _check_no_media_embedding(resampler_cls, kwargs, what)
    other = dict(kwargs, depth=3, num_latents=4, num_media_embeds=5, ff_mult=2)
    call = f"{resampler_cls.__name__}(dim=16, depth=3, num_latents=4, num_media_embeds=5, ff_mult=2, ...)"
    with torch.random.fork_rng(devices=[]):  # building draws random weights: the lesson's own draws stay as they were
        learner, reference = run_learner(resampler_cls, **other, what=call), fl.PerceiverResampler(**other)
    _check_built_as_asked(learner, reference, other["depth"], call)
    check_shapes_follow(learner, reference, call, _size_advice)


def _check_attention_sizes(learner, kwargs: dict, what: str) -> None:
    """Each layer's attention is built with the resampler's heads and dim_head: passed on swapped (or fixed), the
    weights keep their shapes (heads * dim_head is the same), and the forward splits another number of heads."""
    layers = getattr(learner, "layers", None)
    if not isinstance(layers, torch.nn.ModuleList):
        return
    for i, pair in enumerate(layers):
        attention = pair[0] if isinstance(pair, torch.nn.ModuleList) and len(pair) else None
        heads = getattr(attention, "heads", None)
        if isinstance(heads, int) and heads != kwargs["heads"]:
            fail(f"{what}'s layer {i} attention has heads={heads}, where the resampler was built with "
                 f"heads={kwargs['heads']}, dim_head={kwargs['dim_head']}: pass them on by name, "
                 "`MyPerceiverAttention(dim=dim, dim_head=dim_head, heads=heads)` (swapped, the weights keep their "
                 "shapes and only the number of heads changes).")


def _check_depth(learner, depth: int, call: str) -> None:
    layers = getattr(learner, "layers", None)
    if isinstance(layers, torch.nn.ModuleList) and len(layers) != depth:
        fail(f"{call} has {len(layers)} layers: depth={depth} asks for {depth}, one (attention, feed-forward) pair "
             "for each i in range(depth).")


def _check_built_as_asked(learner, reference, depth: int, call: str) -> None:
    """The learner's module has the parameters the reference has when built with the same arguments: the forward
    checks build their reference from the learner's own shapes, so a layer too many would be in both."""
    _check_depth(learner, depth, call)
    check_parameter_names(learner, reference, what=call, whose="fl.PerceiverResampler's with the same arguments",
                          most=3, fix="Build exactly the table's attributes from the constructor's arguments.")


def _size_advice(name: str) -> str:
    """What to do when parameter `name` has another shape than with the constructor's arguments."""
    if name == "latents":
        return "use num_latents: nn.Parameter(torch.randn(num_latents, dim))."
    if name == "media_pos_emb":
        return "use num_media_embeds: nn.Parameter(torch.randn(num_media_embeds, 1, dim))."
    if name.startswith("layers.") and name.split(".")[2] == "1":
        return "pass ff_mult on to each MyFeedForward(dim, mult=ff_mult)."
    if name.startswith("layers."):
        return "pass dim_head and heads on to each MyPerceiverAttention(dim=dim, dim_head=dim_head, heads=heads)."
    return "take every size from the constructor's arguments."


def _check_latents_start_apart(learner, what) -> None:
    """The latents start as different random vectors: the check copies the reference's weights in, so only here is
    the learner's own start seen. Latents that start equal ask the same question, get the same answer and the same
    gradient, and so stay equal for ever."""
    latents = getattr(learner, "latents", None)
    if not isinstance(latents, torch.Tensor) or latents.ndim != 2 or latents.shape[0] < 2:
        return  # the checker names a missing or misshaped latents parameter
    first = latents.detach()[:1]  # (1, d)
    if torch.equal(latents.detach(), first.expand_as(latents)):
        value = f"all {latents.detach().flatten()[0].item():g}" if bool((latents == latents.flatten()[0]).all()) else "one row repeated"
        fail(f"{what}'s latents start equal ({value}): draw each at random, nn.Parameter(torch.randn(num_latents, dim)). "
             "Equal latents ask the same question of the features, get the same answer and the same gradient, so they "
             "stay equal while training and the resampler gives num_latents copies of one token.")


def _check_no_media_embedding(resampler_cls, kwargs, what) -> None:
    """With media_embedding="none" the module has no media_pos_emb and adds nothing; a bad value is a ValueError."""
    call = f"{resampler_cls.__name__}(..., media_embedding=\"none\")"
    learner = run_learner(resampler_cls, **kwargs, media_embedding="none", what=call, advice={
        "unexpected keyword argument": "add media_embedding=\"per_media\" to the constructor's arguments.",
    })
    if "media_pos_emb" in learner.state_dict():
        fail(f"{call} still has media_pos_emb: create it only when media_embedding == \"per_media\".")
    check_layer(learner, fl.PerceiverResampler, what=f"{what} with media_embedding=\"none\"", mistakes=_resampler_mistakes)
    try:
        resampler_cls(**kwargs, media_embedding="per_image")
    except ValueError as error:
        if "media_embedding" not in str(error):
            fail(f"{resampler_cls.__name__}(..., media_embedding=\"per_image\") raised ValueError({str(error)!r}): "
                 "name the argument, media_embedding, in the message.")
    else:
        fail(f"{resampler_cls.__name__}(..., media_embedding=\"per_image\") was accepted: raise a ValueError naming "
             "media_embedding for any value but \"per_media\" and \"none\".")


def _reference_video(resampler, frames, *, norm=True):
    flat = rearrange(frames + resampler.media_pos_emb[: frames.shape[1]], "b T S d -> b 1 (T S) d")  # (b, 1, T*S, d)
    if norm:
        return resampler(flat - resampler.media_pos_emb[0])  # (b, 1, L, d): the forward adds embedding 0 to its one media
    z = repeat(resampler.latents, "L d -> b 1 L d", b=frames.shape[0])  # (b, 1, L, d)
    return reference_layers(resampler.layers, flat, z)  # (b, 1, L, d): the layers without the final norm


def check_video(resample_video, resampler) -> None:
    """Exercise 1: `resample_video(resampler, frames)`, (b, T, S, d) -> (b, 1, L, d).

    A batch of 3 and 4 frames, sizes no variable of the lesson has and apart from each other, so a size taken from
    the notebook fails and the batch and the frames are not confused; then a
    backward pass on a copy of the resampler, so latents (or other weights) kept out of autograd are named."""
    device = resampler.latents.device
    g = torch.Generator().manual_seed(5)
    video = torch.randn(3, 4, 7, resampler.latents.shape[1], generator=g).to(device)  # (b, T, S, d): b and T apart
    what = "your resample_video(resampler, frames)"
    batch = ("the latents were repeated for another batch size than the frames': take b from frames.shape[0], not "
             "from a variable of the notebook.")
    per_frame = ("the latents and the flattened video disagree on the media axis: the video is one media, (b, 1, "
                 "T*S, d), so its latents are (b, 1, L, d), not one set per frame.")
    with torch.no_grad():
        got = run_untouched(resample_video, resampler, video, what=what, names=("resampler", "frames"),
                            fix="write x = frames + media_pos_emb[:T], a new tensor.",
                            advice={f"latents is ({video.shape[0]}, {video.shape[1]},": per_frame,
                                    "Sizes of tensors must match": per_frame, "must agree in batch": batch})
        compare(got, _reference_video(resampler, video), what=what, mistakes=[
            Mistake("time embeddings forgotten", resampler(rearrange(video, "b T S d -> b 1 (T S) d") - resampler.media_pos_emb[0]),
                    "the frames got no time embeddings: add media_pos_emb[:T] before flattening, so their order matters."),
            Mistake("frames as separate media", resampler(video),
                    "each frame got its own latents: flatten the frames into one media, 'b T S d -> b 1 (T S) d'."),
            Mistake("frames resampled apart, then averaged", resampler(video).mean(dim=1, keepdim=True),
                    "each frame was resampled on its own and the results averaged: the latents never compare the "
                    "frames. Flatten the frames into one media first, 'b T S d -> b 1 (T S) d', so the latents attend "
                    "to all of them at once."),
            Mistake("final norm missing", _reference_video(resampler, video, norm=False),
                    "the final norm is missing: the resampler's forward ends with resampler.norm(z), and so must yours."),
            Mistake("one embedding after flattening", resampler(rearrange(video, "b T S d -> b 1 (T S) d")),
                    "the frames were flattened first, and the forward then added one embedding, media_pos_emb[0], to "
                    "them all: add media_pos_emb[:T] to the frames before flattening, so each frame gets its own."),
            Mistake("embedding 0 twice", resampler(rearrange(video + resampler.media_pos_emb[: video.shape[1]], "b T S d -> b 1 (T S) d")),
                    "the flattened video went through resampler(...), whose forward adds media_pos_emb[0] to its one "
                    "media, on top of the frames' own embeddings: run the layers and the norm yourself, as forward "
                    "does, without adding an embedding again."),
        ])
    _check_video_gradients(resample_video, resampler, video, g, what)
    passed(f"resample_video turns {video.shape[1]} frames x {video.shape[2]} features into one media of latents for "
           "the whole video.")


def _check_video_gradients(resample_video, resampler, video, g, what) -> None:
    """Every weight the paper's video resampling trains gets a gradient from the learner's; copies keep the
    lesson's resampler without gradients."""
    mine, reference = copy.deepcopy(resampler), copy.deepcopy(resampler)
    cotangent = torch.randn(video.shape[0], 1, *resampler.latents.shape, generator=g).to(video.device)  # (b, 1, L, d)
    with torch.enable_grad():
        got = run_learner(resample_video, mine, video.clone(), what=what)
        if got.requires_grad:
            (got * cotangent).sum().backward()
        (_reference_video(reference, video) * cotangent).sum().backward()
    theirs = dict(mine.named_parameters())
    lost = [name for name, p in reference.named_parameters()
            if p.grad is not None and bool(p.grad.any()) and theirs[name].grad is None]
    if "latents" in lost:
        fail(f"{what}: no gradient reaches resampler.latents, so they would never train: use them as they are in "
             "the repeat (no .detach(), no torch.no_grad()).")
    if lost:
        fail(f"{what}: no gradient reaches {', '.join(lost)}, so {'it' if len(lost) == 1 else 'they'} would never "
             "train: keep every weight in the computation (no .detach(), no torch.no_grad()).")


def _resampler_parts(cfg: dict) -> dict:
    """How many numbers each part of a resampler of size `cfg` has: every parameter and every module that holds
    parameters, by name; a part of the layers counted over all of them ("every layer's attention norm_media")."""
    parts: dict = {}
    resampler = fl.PerceiverResampler(**cfg)
    for name, p in resampler.named_parameters():
        pieces = name.split(".")
        prefix, rest = "", pieces
        if pieces[0] == "layers":  # layers.N.0.x is a layer's attention, layers.N.1.x its feed-forward
            prefix, rest = f"every layer's {'attention' if pieces[2] == '0' else 'feed-forward'} ", pieces[3:]
            if pieces[2] == "1":  # the feed-forward is a Sequential: say what its numbered part is
                kind = type(resampler.get_submodule(".".join(pieces[:4]))).__name__
                rest = [f"{kind} [{pieces[3]}]", *rest[1:]]
        for end in range(1, len(rest) + 1):  # each module that holds the parameter, then the parameter itself
            part = prefix + ".".join(rest[:end])
            parts[part] = parts.get(part, 0) + p.numel()
    return parts


def _param_count_guess(offsets: list) -> str:
    """The parts of the resampler with exactly as many numbers as the count is off by, in every size where it is
    off (one size alone often matches some part by chance), to say which one it may be. offsets: [(cfg, off)]."""
    sign = {off > 0 for _, off in offsets}
    if len(sign) != 1:
        return ""
    common = None
    for cfg, off in offsets:
        names = {part for part, n in _resampler_parts(cfg).items() if n == abs(off)}
        common = names if common is None else common & names
    common = {n for n in common or () if "." not in n or n.rsplit(".", 1)[0] not in common}  # a module holding one weight: say it once
    match = sorted(common, key=lambda n: (n.startswith("every layer"), n.count("."), n))[:3]
    if not match:
        return ""
    return f"; as many numbers as {' or '.join(match)}, {'counted twice' if sign == {True} else 'not counted'}?"


def check_param_count(resampler_param_count) -> None:
    """Exercise 2: `resampler_param_count(...)` equals the module's count for three sizes; where it is off, the
    verdict guesses the part from the offsets of all three (a part is named only if it fits every one)."""
    offsets, first = [], None
    for cfg in [
        dict(dim=32, depth=2, dim_head=16, heads=2, num_latents=64, num_media_embeds=4, ff_mult=4),
        dict(dim=24, depth=3, dim_head=8, heads=4, num_latents=5, num_media_embeds=2, ff_mult=2),
        dict(dim=16, depth=0, dim_head=4, heads=1, num_latents=3, num_media_embeds=1, ff_mult=4),
        dict(dim=16, depth=1, dim_head=4, heads=2, num_latents=3, num_media_embeds=2, ff_mult=2.5),  # int(dim * mult)
    ]:
        actual = sum(p.numel() for p in fl.PerceiverResampler(**cfg).parameters())
        got = run_learner(resampler_param_count, **cfg, what=f"your resampler_param_count(**{cfg})")
        if got != actual:
            offsets.append((cfg, got - actual))
            first = first or (cfg, got, actual)
    rounded = [(cfg, off) for cfg, off in offsets if cfg["ff_mult"] != int(cfg["ff_mult"])]
    if rounded and len(rounded) == len(offsets) and all(  # wrong only where ff_mult is not whole
            off == -2 * cfg["depth"] * cfg["dim"] * (int(cfg["dim"] * cfg["ff_mult"]) - cfg["dim"] * int(cfg["ff_mult"]))
            for cfg, off in rounded):
        cfg, off = rounded[0]
        fail(f"for {cfg} you counted {-off} numbers too few: the feed-forward's hidden width is "
             f"int(dim * ff_mult) = {int(cfg['dim'] * cfg['ff_mult'])}, not dim * int(ff_mult) = "
             f"{cfg['dim'] * int(cfg['ff_mult'])}; round after multiplying.")
    if first:
        cfg, got, actual = first
        fail(f"for {cfg} you counted {got}, the module has {actual} (off by {got - actual}): print "
             f"[(n, p.numel()) for n, p in fl.PerceiverResampler(**{cfg}).named_parameters()] to see each part"
             f"{_param_count_guess(offsets)}.")
    passed("resampler_param_count matches the module for four sizes, ff_mult=2.5 among them.")


keep_rng(globals())  # no check moves the lesson's random numbers

register_nudges({  # first hints for the steps whose full hint is the answer
    "03.embed": "One learned embedding per media, the same for every feature of that media and every sample. Slice "
    "the embeddings to the number of media the input has; broadcasting does the rest.",
    "03.layers": "Each layer is an attention and a feed-forward. Each computes an update of the latents, and the "
    "residual adds it to what they already were. The attention's queries are the latents; its keys and "
    "values also see the features.",
    "03.video": "A video is frames of one media. Give each frame its own embedding first, then treat all frames' "
    "features as one media's, and run the latents over it as forward does.",
})
