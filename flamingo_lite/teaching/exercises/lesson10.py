"""Checks for lesson 10: the learner writes the segment-view cross-attention's forward, then two counting exercises.

The layer is checked with the reference's weights on a batch with every awkward case (text before the first
image, a marker at position 0, two markers in a row, a media without a marker), against the usual mistakes
computed on the same input: media numbered from 0 (each segment reading the next image), text before the first
image left attending to the first image (or, from a loop over text time 0, the last one), the softmax over the wrong
axis, the scale forgotten, all previous media, and code right for the first sample only. A layer whose outputs match
then runs `check_module`'s backward pass, so one that cuts the gradient (`media.detach()`) is named too, and its
multiply-adds are counted, so the mask view written by hand, right in every number, is named by its cost.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange

from ... import masks
from ...cross_attention import MaskedCrossAttention
from ...segments import segment_attend
from . import (Mistake, check_layer, check_parameter_names, compare, fail, passed, record_verdicts, refuse_the_answer,
               register_hints, register_nudges, run_learner, run_untouched)

DIM, HEADS, DIM_HEAD = 16, 2, 8

register_hints({
    "10.segments": "For each row and each text time k_time in 1..t: `tokens = (times[row] == k_time).nonzero()"
                   ".flatten()`; skip it when empty; the segment's image is media k_time - 1 (text time counts from 1, "
                   "media indices from 0); `softmax(q_seg @ k_segᵀ * scale, dim=-1)` over the image's m latents, then "
                   "`@ v_seg`. Tokens with text time 0 keep their zeros.",
    "10.lengths": "`masks.text_time(media_locations)` gives (b, n); compare it with `torch.arange(1, t + 1)` on a new "
                  "last axis and count along the tokens: `(times[..., None] == arange).sum(dim=1)`.",
    "10.scores": "The mask view scores every token against every latent: b * heads * n * t * m. The segment view "
                 "only the tokens that see an image, each against m latents: heads * m * (tokens with text time >= 1).",
})


def example_inputs(seed: int = 0):
    """x (2, 12, d), media (2, 4, 3, d), media_locations (2, 12): the lesson's awkward rows, plus a 4th media that
    no marker points at."""
    generator = torch.Generator().manual_seed(seed)
    media_locations = torch.zeros(2, 12, dtype=torch.bool)  # (b, n)
    media_locations[0, [2, 6, 9]] = True
    media_locations[1, [0, 1, 7]] = True
    x = torch.randn(2, 12, DIM, generator=generator)  # (b, n, d)
    media = torch.randn(2, 4, 3, DIM, generator=generator)  # (b, t, m, d)
    return x, media, media_locations


def segment_reference(layer, x, media, media_locations, *, media_offset=1, blind_sees_first=False, softmax_dim=-1,
                      scaled=True, all_previous=False, blind_zero=False,
                      normed=True, projected=True, all_media=False, markers_out=False, last_left_out=False):
    """The segment view with the usual mistakes as switches: (b, n, d). `media_offset=1` is right (text time k reads
    media k-1); 0 is "media numbered from 0" (text time k reads media k, and text time 0 reads media 0)."""
    q = rearrange(layer.to_q(layer.norm(x) if normed else x), "b n (h e) -> b h n e", h=layer.heads)  # (b, h, n, e)
    k, v = layer.to_kv(media).chunk(2, dim=-1)  # 2 x (b, t, m, h*e)
    k = rearrange(k, "b t m (h e) -> b h t m e", h=layer.heads)  # (b, h, t, m, e)
    v = rearrange(v, "b t m (h e) -> b h t m e", h=layer.heads)  # (b, h, t, m, e)
    scale = layer.scale if scaled else 1.0
    times = masks.text_time(media_locations)  # (b, n)
    out = torch.zeros_like(q)  # (b, h, n, e)
    num_media = media.shape[1]
    for row in range(x.shape[0]):
        for k_time in range(0, num_media + 1):
            in_segment = times[row] == k_time  # (n,)
            if markers_out:  # the <image> token itself left out of the segment it opens
                in_segment = in_segment & ~media_locations[row]
            tokens = in_segment.nonzero().flatten()  # (s,)
            index = k_time - media_offset
            if last_left_out and k_time == num_media:
                continue
            if k_time == 0:
                if not (blind_sees_first or (media_offset == 0 and not blind_zero)):
                    continue  # text before the first image sees nothing
                index = 0
            if len(tokens) == 0 or not 0 <= index < num_media:
                continue
            if all_previous or all_media:
                last = num_media if all_media else index + 1
                k_seg = rearrange(k[row, :, :last], "h t m e -> h (t m) e")  # (h, t'*m, e)
                v_seg = rearrange(v[row, :, :last], "h t m e -> h (t m) e")  # (h, t'*m, e)
            else:
                k_seg, v_seg = k[row, :, index], v[row, :, index]  # (h, m, e)
            scores = q[row, :, tokens] @ k_seg.transpose(-1, -2) * scale  # (h, s, m)
            out[row, :, tokens] = scores.softmax(dim=softmax_dim) @ v_seg  # (h, s, e)
    out = rearrange(out, "b h n e -> b n (h e)")  # (b, n, h*e)
    return layer.to_out(out) if projected else out  # (b, n, d)


NUMBERED_FROM_0 = ("media are numbered from 0: a token with text time k belongs to media k - 1 (text time counts "
                   "the markers from 1, the media axis from 0), and text time 0 reads no media at all.")


def segment_mistakes(reference, x, media, media_locations) -> list[Mistake]:
    """The segment view's usual mistakes, each computed with `reference`'s weights on these inputs."""
    ref = lambda **kw: segment_reference(reference, x, media, media_locations, **kw)  # noqa: E731
    return [
        Mistake("numbered from 0", ref(media_offset=0), NUMBERED_FROM_0),
        Mistake("numbered from 0, blind zero", ref(media_offset=0, blind_zero=True), NUMBERED_FROM_0),
        Mistake("blind sees first", ref(blind_sees_first=True),
                "text before the first image attends to the first image: tokens with text time 0 must stay 0."),
        Mistake("softmax axis", ref(softmax_dim=-2),
                "the softmax runs over the segment's tokens: each token's weights must sum to 1 over the image's "
                "latents (dim=-1)."),
        Mistake("no scale", ref(scaled=False), "the scores are not scaled: multiply them by self.scale (1/sqrt(e))."),
        Mistake("no norm", ref(normed=False), "the text is not normalised: the queries come from "
                "`self.to_q(self.norm(x))`."),
        Mistake("no to_out", ref(projected=False), "the heads' outputs are returned as they are: merge the heads "
                "and pass them through `self.to_out`."),
        Mistake("all previous", ref(all_previous=True),
                "each segment attends to every image up to its own: in the immediate mode it reads only its own."),
        Mistake("all media", ref(all_media=True),
                "every token that follows an image attends to the latents of all the images, future ones "
                "included: that is no segments at all; a segment attends only to its own image's m latents."),
        Mistake("markers out", ref(markers_out=True),
                "the <image> tokens are left out of their segments (their rows are 0): a marker's text time "
                "counts itself, so it opens its segment and attends to its own image."),
        Mistake("last left out", ref(last_left_out=True),
                "the last image's segment is left out (its tokens stay 0): loop over text times 1 to t "
                "inclusive, range(1, t + 1)."),
    ]


def check_segment_layer(layer_class) -> None:
    """Step "10.segments": the learner's segment-view layer with the reference's weights."""
    refuse_the_answer(layer_class, (segment_attend, MaskedCrossAttention))  # step 6's one call is the package's
    x, media, media_locations = example_inputs()
    torch.manual_seed(3)
    reference = MaskedCrossAttention(dim=DIM, dim_head=DIM_HEAD, heads=HEADS)
    mine = run_learner(layer_class, dim=DIM, dim_head=DIM_HEAD, heads=HEADS, what="building your layer")
    _check_parameter_names(mine, reference)
    mine.load_state_dict(reference.state_dict())
    try:
        with torch.no_grad():
            got = mine(x, media, media_locations)
    except IndexError as error:
        fail(f"your forward indexed past the last media ({str(error).splitlines()[0]}): {NUMBERED_FROM_0}")
    except Exception:  # the learner's own error (or the stub), reported in their words
        with torch.no_grad():
            got = run_learner(mine, x, media, media_locations, what="your layer's forward")
    with torch.no_grad():
        want = reference(x, media, media_locations)  # (b, n, d)
        mistakes = segment_mistakes(reference, x, media, media_locations)
    close = lambda a, b: a.shape == b.shape and torch.allclose(a.float(), b.float(), atol=1e-5)  # noqa: E731
    if isinstance(got, torch.Tensor) and not close(got, want):
        for mistake in mistakes:
            if close(got, mistake.output):
                fail(f"your segment layer: {mistake.message}")
        blind = masks.text_time(media_locations) == 0  # (b, n): text before the first image
        if close(got[~blind], want[~blind]):
            rows = sorted({int(r) for r in blind.nonzero()[:, 0] if (got[r][blind[r]].abs() > 1e-6).any()})
            fail(f"text before the first image is not 0 (in row{'s' if len(rows) > 1 else ''} "
                 f"{', '.join(map(str, rows))}): tokens with text time 0 belong to no segment, so loop over text times "
                 "1..t only and leave their rows at zero (a loop from 0 reads media -1, the last one).")
        if close(got[0], want[0]):
            fail("your segment layer is right for the first sample and wrong for the others: each row has its own "
                 "markers, so take the text times, the segments and the media of that row (times[row], media[row]), "
                 "not of row 0.")
    compare(got, want, what="your segment layer")
    # the other cases and the backward pass, the usual mistakes named on the case where they show
    check_layer(mine, reference, (x, media, media_locations), what="your segment layer", mistakes=segment_mistakes,
                quiet=True)
    _check_other_sizes(layer_class)
    _check_cost(layer_class)
    passed("your segment-view layer matches flamingo_lite.MaskedCrossAttention, text before the first image and a "
           "media without a marker included.")


def _check_parameter_names(mine, reference) -> None:
    """The learner's layer has the reference's parameters, by name and shape, each named when it is not."""
    check_parameter_names(mine, reference, what="your layer", parts="norm, to_q, to_kv, to_out", shapes=True,
                          fix="Keep the layers of lesson 05's MaskedCrossAttention, under their names, and no others.")


def _check_cost(layer_class) -> None:
    """The segment view's point is what it does not compute: on 16 images, 4 tokens each, a layer that scores every
    token against every image and then masks (the mask view written by hand) gives the same numbers at 16 times
    the attention's cost. Its multiply-adds are counted (torch's FlopCounterMode) against the two views' own. On CPU the
    counter does not see inside F.scaled_dot_product_attention, so while the layer runs that function is wrapped to
    count its two products itself (a mask handed to it does not shrink them)."""
    from torch.utils.flop_counter import FlopCounterMode

    b, t, per_image, m = 2, 16, 4, 3
    n = t * per_image
    locations = torch.zeros(b, n, dtype=torch.bool)  # (b, n)
    locations[:, ::per_image] = True  # a marker every 4 tokens: 16 segments of 4
    generator = torch.Generator().manual_seed(6)
    x, media = torch.randn(b, n, DIM, generator=generator), torch.randn(b, t, m, DIM, generator=generator)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(4)
        mine = run_learner(layer_class, dim=DIM, dim_head=DIM_HEAD, heads=HEADS, what="building your layer")
    inner = HEADS * DIM_HEAD
    projections = 2 * b * n * DIM * inner * 2 + 2 * b * t * m * DIM * 2 * inner  # to_q and to_out, to_kv
    segment_view = 2 * 2 * HEADS * m * DIM_HEAD * b * n  # scores and weighted values: each token, its m latents
    mask_view = 2 * 2 * b * HEADS * n * t * m * DIM_HEAD  # every token against every image's latents
    original, unseen = F.scaled_dot_product_attention, []  # unseen: the FLOPs of the SDPA calls the counter missed

    def counted(query, key, value, *args, **kwargs):
        before = counter.get_total_flops()
        out = original(query, key, value, *args, **kwargs)  # (..., L, Ev)
        if counter.get_total_flops() == before:  # scores (L x S, E deep) and weighted values (L x Ev, S deep)
            batch = torch.broadcast_shapes(query.shape[:-2], key.shape[:-2]).numel()
            unseen.append(2 * batch * query.shape[-2] * key.shape[-2] * (query.shape[-1] + value.shape[-1]))
        return out

    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        F.scaled_dot_product_attention = counted
        try:
            run_learner(mine, x, media, locations, what="your layer on 16 images, 4 tokens each")
        finally:
            F.scaled_dot_product_attention = original
    attention = counter.get_total_flops() + sum(unseen) - projections
    if attention > (segment_view + mask_view) / 2:
        fail(f"your segment layer gives the right numbers at the mask view's cost: on 16 images of 4 tokens each its "
             f"attention takes {attention:,} FLOPs, where the segment view needs {segment_view:,} and the mask view "
             f"{mask_view:,}. Score each segment's tokens against its own image's latents only, "
             "`q[row, :, tokens] @ k[row, :, k_time - 1].transpose(-1, -2)`, rather than every token against every "
             "image and a mask.")


def _check_other_sizes(layer_class) -> None:
    """Built with other sizes than the lesson's (4 heads of width 6, so the heads' width differs from dim, and a row
    with 4 markers): a number typed in shows here, and check_module's float64 run shows a tensor made in float32."""
    heads, dim_head = 4, 6
    call = f"your layer built with heads={heads}, dim_head={dim_head}, on a row with 4 markers"
    generator = torch.Generator().manual_seed(5)
    locations = torch.zeros(2, 10, dtype=torch.bool)  # (b, n)
    locations[0, [0, 3, 5, 8]] = True
    locations[1, [1, 4]] = True
    x, media = torch.randn(2, 10, DIM, generator=generator), torch.randn(2, 4, 3, DIM, generator=generator)
    with torch.random.fork_rng(devices=[]):  # building draws random weights: the lesson's own draws stay as they were
        torch.manual_seed(4)
        reference = MaskedCrossAttention(dim=DIM, dim_head=dim_head, heads=heads)
        mine = run_learner(layer_class, dim=DIM, dim_head=dim_head, heads=heads, what=f"building {call}")
    _check_parameter_names(mine, reference)
    check_layer(mine, reference, (x, media, locations), what=call, mistakes=segment_mistakes, quiet=True,
                check_cases=False)


def check_segment_lengths(segment_lengths, media_locations, num_media) -> torch.Tensor:
    """Exercise "10.lengths" on the lesson's batch and on one marker for three media."""
    # on a copy: an in-place change would otherwise rewrite the notebook's own batch, and every later cell with it
    got = run_untouched(segment_lengths, media_locations, num_media, what="your segment_lengths(media_locations, num_media)",
                        names=("media_locations", "num_media"), trains=False,
                        fix="make a new tensor (`media_locations.long()`, a comparison), never write into it.")
    times = masks.text_time(media_locations)  # (b, n)
    want = masks.text_to_media_mask(times, num_media, True).sum(dim=1)  # (b, t)
    from_0 = (times[..., None] == torch.arange(num_media, device=times.device)).sum(dim=1)  # (b, t)
    without_markers = ((times[..., None] == torch.arange(1, num_media + 1, device=times.device))
                       & ~media_locations[..., None]).sum(dim=1)  # (b, t): each segment without its <image> token
    compare(got, want, what="your segment_lengths", mistakes=[
        Mistake("numbered from 0", from_0, NUMBERED_FROM_0),
        Mistake("markers out", without_markers, "each segment is counted without its <image> token: the marker's "
                "text time counts itself, so it belongs to the segment it opens."),
    ])
    if got.dtype != torch.long:
        fail(f"segment_lengths returned {got.dtype}: counts are a long tensor (`.sum()` of a bool tensor gives one).")
    one_marker = torch.zeros(1, 6, dtype=torch.bool, device=media_locations.device)  # (1, n): one marker, three media
    one_marker[0, 2] = True
    other = run_learner(segment_lengths, one_marker, 3, what="your segment_lengths(one marker, 3 media)")
    compare(other, torch.tensor([[4, 0, 0]]), what="segment_lengths for one marker and three media (a media without a "
            "marker has length 0)")
    four = torch.tensor([[1, 0, 1, 0, 0, 1, 1, 0]], dtype=torch.bool, device=media_locations.device)  # (1, n): 4 media
    compare(run_learner(segment_lengths, four, 4, what="your segment_lengths(four markers, 4 media)"),
            torch.tensor([[2, 3, 1, 2]]), what="segment_lengths for four markers and 4 media",
            shape_advice="take the number of media from num_media, not from the lesson's example (3).")
    passed("segment_lengths is right.")
    return got


def check_scores_computed(scores_computed, media_locations, num_media, num_latents, heads) -> None:
    """Exercise "10.scores": both views, against the lesson's tensors and a large batch."""
    b, n = media_locations.shape
    seeing = int((~masks.rows_without_media(media_locations)).sum())
    cases = [((media_locations, num_media, num_latents, heads, "mask"), b * heads * n * num_media * num_latents),
             ((media_locations, num_media, num_latents, heads, "segments"), heads * num_latents * seeing)]
    big = torch.zeros(2, 1024, dtype=torch.bool)
    big[:, ::256] = True
    cases += [((big, 4, 64, 8, "mask"), 2 * 8 * 1024 * 4 * 64), ((big, 4, 64, 8, "segments"), 8 * 64 * 2 * 1024)]
    # more media than markers (a batch padded with media no marker points to yet): the mask has a column for each
    cases += [((big, 6, 64, 8, "mask"), 2 * 8 * 1024 * 6 * 64)]
    for args, want in cases:
        got = run_learner(scores_computed, *args, what=f"your scores_computed(..., view={args[-1]!r})")
        got = int(got) if isinstance(got, torch.Tensor) and got.numel() == 1 else got
        if got == want:
            continue
        if args[-1] == "segments" and got == args[3] * args[2] * args[0].numel():
            fail("the segment view counts text before the first image: those tokens compute no scores at all.")
        if args[-1] == "segments" and got == args[2] * seeing:
            fail("the heads are missing: every head computes its own scores.")
        if args[-1] == "mask" and got == want // args[1] * int(args[0].sum(-1).max()):
            fail(f"scores_computed(..., view='mask') counts a column for each marker ({int(args[0].sum(-1).max())}), "
                 f"but num_media={args[1]}: the mask has t * m columns whatever the markers, so take t from num_media.")
        locations, t, m, h, view = args
        rows, length = locations.shape
        factors = ({"the batch size b": rows, "the text length n": length, "num_media t": t} if view == "mask" else
                   {"the tokens that see an image": int((~masks.rows_without_media(locations)).sum())})
        factors.update({"num_latents m": m, "heads": h})
        missing = [name for name, factor in factors.items() if factor > 1 and isinstance(got, int) and got * factor == want]
        if missing:
            fail(f"scores_computed(..., view={view!r}) is {want // got} times too small, {got} where {want} is right: "
                 f"a factor is missing ({' or '.join(missing)}); count one score per query token and latent, per head"
                 f"{' and per sample' if view == 'mask' else ''}.")
        fail(f"scores_computed(..., view={args[-1]!r}) should be {want}, yours is {got!r}.")
    passed("scores_computed is right: the segment view computes exactly the scores the mask keeps.")

register_nudges({  # first hints for the steps whose full hint is the answer
    "10.lengths": "A segment is the tokens that share one text time. Count, in each row, the tokens of each text time "
    "from 1 to t; lesson 04's text time gives you each token's.",
    "10.scores": "Count one score per query token and latent, per head. The mask view scores every token against every "
    "image's latents; the segment view only the tokens that see an image, each against its one image's "
    "latents.",
    "10.segments": "Go through each row's segments, one per image: the tokens whose text time is that image's number. "
    "Each segment attends to its one image's latents only; tokens before the first image keep their "
    "zeros. Mind that text time counts from 1 and the media axis from 0.",
})


record_verdicts(globals())  # failed_checks(lesson10) sees every check's last verdict
