"""Formats and tasks the tiny Flamingo never trained on, with the baselines that tell lookup from learning.

Flamingo's claim (Alayrac et al. 2022, Sec. 1 and Fig. 1) is that a model trained on generic web data does new
tasks from a handful of examples in its prompt. `flamingo_lite.tiny.fewshot`'s curve shows something narrower: the
model is trained on naming episodes `<image> is dax <eoc>` and evaluated on naming episodes with new names. Here,
the same trained model on what its training never showed:

- **A held-out format.** The same naming task in a template no training sequence has:
  `<image> a dax <eoc> <image> a wug <eoc> <image> a` -> a name. In training, `<image> a` is always followed by a
  colour (the captions, `<image> a red circle <eoc>`); only the examples of the prompt say that here a name follows.
- **Rule inference.** The examples name pictures by one attribute, colour in one prompt and shape in another
  (`red circle is dax`, `red square is dax`, `blue circle is wug`), and the query is a colour-shape combination
  the prompt does not show (its class is never among the support pictures). Which attribute counts is said only by
  the examples; a model that copies the name of the most similar picture is right only when the most similar
  picture happens to share the attribute that counts.

Each curve comes with its baselines: chance (1/16, one of the 16 names); nearest neighbour, the name of the support
picture nearest to the query in the frozen vision encoder's pooled features (the lookup a sceptic suspects); the
language model alone, reading the same tokens without pictures; and the model with its induction head(s) zeroed
(`language_model.zero_attention_heads`). The heads are picked by what zeroing each one costs on calibration
episodes (`head_effects`), not only by where they look (`name_attention`): a head can look at the right name and
not be the one that does the work.

Shapes: E prompts, P pool pictures, k support pictures, g grid cells, d vision width, V vocabulary.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ..device import get_device
from ..masks import MEDIA_TOKEN
from ..validation import check_non_negative_int, check_positive_int
from .data import COLOURS, EOC_TOKEN, SHAPES, Tokenizer, render_shape
from .fewshot import (
    CLASSES, IS, NAMES, Episode, choose_support, class_words, episode_grids, make_heldout_episodes, score_batch,
    likeliest_name, shot_words, text_name_accuracy,
)
from .language_model import zero_attention_heads

HELDOUT_WORD = "a"  # `<image> a NAME <eoc>`: in training, `<image> a` is followed by a colour, never by a name
TEMPLATES = {"training": IS, "heldout": HELDOUT_WORD}  # the word between a picture and its name
ATTRIBUTES = ("colour", "shape")
CURVES = ("curve", "knn_curve", "lm_only_curve", "head_ablated_curve", "attention_head_ablated_curve", "in_support",
          "prompt_names_guess")  # what heldout_curves gives per task, each keyed by str(k)
CALIBRATION_EPISODES = 200  # the episodes heads are picked on (`head_effects`), drawn apart from those scored
CALIBRATION_SEED = 1000  # their seed: the run's seed + this, so that no run's scored episodes are another's calibration


def template_words(support_classes, names, word: str) -> list[str]:
    """A k-shot prompt's words: `<image> WORD NAME <eoc>` per support picture, then `<image> WORD` for the query.

    support_classes: the class index of each support picture, in order; names: the name index of each class.
    """
    words = []
    for c in support_classes:
        words += [MEDIA_TOKEN, word, NAMES[names[int(c)]], EOC_TOKEN]
    return words + [MEDIA_TOKEN, word]


def attribute_value(class_index: int, attribute: str) -> int:
    """The index of a class's colour (0-3) or shape (0-2)."""
    colour, shape = CLASSES[class_index]
    return COLOURS.index(colour) if attribute == "colour" else SHAPES.index(shape)


@dataclass
class RuleEpisode(Episode):
    """An `Episode` whose names follow one attribute: `names[c]` is the name of class c's colour (or shape), so
    classes that share it share a name. The pool never holds the query's class."""

    attribute: str = "colour"


def make_rule_episodes(num_episodes: int, *, seed: int = 0, pool_size: int = 48, image_size: int = 16) -> list[RuleEpisode]:
    """Rule-inference episodes from their own random stream: half by colour, half by shape, fresh names."""
    check_positive_int("num_episodes", num_episodes)
    check_positive_int("pool_size", pool_size)
    rng = np.random.default_rng(np.random.SeedSequence([seed, 20]).spawn(1)[0])  # independent of every other stream
    episodes = []
    for i in range(num_episodes):
        attribute = ATTRIBUTES[i % 2]
        values = len(COLOURS) if attribute == "colour" else len(SHAPES)
        value_names = [int(n) for n in rng.permutation(len(NAMES))[:values]]  # a name per colour (or shape)
        names = [value_names[attribute_value(c, attribute)] for c in range(len(CLASSES))]
        query = int(rng.integers(len(CLASSES)))
        others = [c for c in range(len(CLASSES)) if c != query]  # combinations the prompt may show
        pool_classes = [others[int(j)] for j in rng.integers(len(others), size=pool_size)]
        pool = np.stack([render_shape(CLASSES[c][1], CLASSES[c][0], image_size=image_size, rng=rng) for c in pool_classes])
        q = render_shape(CLASSES[query][1], CLASSES[query][0], image_size=image_size, rng=rng)
        episodes.append(RuleEpisode(torch.from_numpy(pool), pool_classes, torch.from_numpy(q), query, names, attribute))
    return episodes


@torch.no_grad()
def nearest_support(support: torch.Tensor, query: torch.Tensor) -> int:
    """The nearest-neighbour baseline's choice: the index of the support picture most similar to the query, by the
    cosine of their frozen vision features averaged over the grid cells. support (k, g, d), query (g, d), k >= 1."""
    if not isinstance(support, torch.Tensor) or not isinstance(query, torch.Tensor):
        raise TypeError(f"support and query must be tensors, got {type(support).__name__} and {type(query).__name__}")
    if support.ndim != 3 or query.ndim != 2 or support.shape[0] < 1 or support.shape[1:] != query.shape:
        raise ValueError(f"support must be (k, g, d) with k >= 1 and query (g, d) of the same g and d, got support "
                         f"{tuple(support.shape)} and query {tuple(query.shape)}")
    pooled_support = F.normalize(support.mean(dim=1), dim=-1)  # (k, d): each picture averaged over its cells
    pooled_query = F.normalize(query.mean(dim=0), dim=-1)  # (d,)
    return int((pooled_support @ pooled_query).argmax())  # the most similar support picture


def evaluate_format(model, episodes: list[Episode], k: int, tokenizer: Tokenizer, *, word: str = HELDOUT_WORD,
                    seed: int = 0, device=None, grids: list | None = None, lm_only: bool = False,
                    nearest=nearest_support, build=None) -> dict:
    """Accuracy of k-shot prompts in the template `<image> WORD NAME <eoc>`, scored by the likelihood of the 16 names.

    Returns `scoring` (the model), `knn` (the name of the support picture nearest the query in pooled frozen
    vision features, the same support; chance at k = 0), `in_support` (the share of prompts that show the
    answer's name at all) and `prompt_names_guess` (the accuracy of guessing uniformly among the names the prompt
    shows: what a model that has learned only "answer with a name from the prompt" would get). `lm_only`: `model`
    is a `TinyLM` reading the same tokens blind (no `knn`). `nearest(support (k, g, d), query (g, d)) -> int`: the
    baseline's choice of support picture; `build(support_classes, names, tokenizer, word=word) -> ids`: the prompt's
    token ids, `template_words` encoded when None (lesson 12 plugs the learner's functions in).
    """
    check_non_negative_int("k", k)
    device = get_device(device)
    if not lm_only and grids is None:
        grids = episode_grids(model, episodes, device=device)
    rng = np.random.default_rng([seed, k, 20])
    prompts, pictures, answers, knn_right, shown, guess = [], [], [], [], [], []
    for i, ep in enumerate(episodes):
        chosen = choose_support(ep, k, rng=rng)
        classes = [ep.pool_classes[j] for j in chosen]
        if build is None:
            prompts.append(tokenizer.encode(template_words(classes, ep.names, word)))
        else:
            prompts.append(list(build(classes, ep.names, tokenizer, word=word)))
        answer = ep.names[ep.query_class]
        answers.append(tokenizer.index[NAMES[answer]])
        prompt_names = {ep.names[c] for c in classes}
        shown.append(answer in prompt_names)
        guess.append(1.0 / len(prompt_names) if answer in prompt_names else 0.0)
        if lm_only:
            continue
        pictures.append(grids[i][chosen + [len(ep.pool_classes)]])  # (k+1, g, d): the support, then the query
        if k == 0:
            knn_right.append(1.0 / len(NAMES))  # nothing to look up: a guess
        else:
            nearest_index = nearest(grids[i][chosen], grids[i][len(ep.pool_classes)])  # the most similar support picture
            knn_right.append(float(ep.names[classes[nearest_index]] == answer))
    tokens = torch.tensor(prompts, dtype=torch.long, device=device)  # (E, n): every prompt has the same length
    features = None if lm_only else torch.stack(pictures)  # (E, k+1, g, d)
    logits, _ = score_batch(model, tokens, features, tokenizer, lm_only=lm_only)  # (E, V)
    right = (likeliest_name(logits, tokenizer) == torch.tensor(answers, device=device)).float()  # (E,)
    return {
        "scoring": float(right.mean()),
        "knn": None if lm_only else float(np.mean(knn_right)),
        "in_support": float(np.mean(shown)),
        "prompt_names_guess": float(np.mean(guess)),
    }


@torch.no_grad()
def rule_in_words(lm, episodes: list[RuleEpisode], k: int, tokenizer: Tokenizer, *, seed: int = 0, device=None) -> dict:
    """Rule inference written as words, the form of the language model's own pretraining: `red circle is dax <eoc>`
    per support picture, then the query's `red triangle is`, with the support `evaluate_format` draws for the same
    seed and k. The language model is frozen in Flamingo, so what it does here bounds what the pictures can add.

    Returns `lm_words`, the language model's accuracy by the likelihood of the 16 names, and `attribute_vote`: each
    support example that shares the query's colour votes for its name, and so does each that shares its shape; the
    name with the most votes wins, ties split evenly, and a guess among the 16 when no example shares either (k = 0).
    No rule is read: the vote only counts shared words, as a copying head that matched a part of the query could, and
    the attribute that counts wins because its examples all give one name while the other attribute's give several.
    """
    check_non_negative_int("k", k)
    device = get_device(device)
    rng = np.random.default_rng([seed, k, 20])  # evaluate_format's stream: the same support pictures
    prompts, answers, vote = [], [], []
    for ep in episodes:
        classes = [ep.pool_classes[j] for j in choose_support(ep, k, rng=rng)]
        words = [w for c in classes for w in shot_words(c, NAMES[ep.names[c]], picture=False)]
        prompts.append(tokenizer.encode(words + class_words(ep.query_class) + [IS]))
        answer = ep.names[ep.query_class]
        answers.append(tokenizer.index[NAMES[answer]])
        colour, shape = CLASSES[ep.query_class]
        votes = {}
        for c in classes:
            shared = (CLASSES[c][0] == colour) + (CLASSES[c][1] == shape)  # 0, 1 (never 2: the query's class is absent)
            votes[ep.names[c]] = votes.get(ep.names[c], 0) + shared
        most = max(votes.values(), default=0)
        winners = [n for n, v in votes.items() if v == most and v > 0]
        vote.append(1.0 / len(winners) if answer in winners else 0.0 if winners else 1.0 / len(NAMES))  # none: a guess
    return {"lm_words": text_name_accuracy(lm, prompts, answers, tokenizer, device=device),
            "attribute_vote": float(np.mean(vote))}


OPEN_ENDED_EPISODES = 200  # the first prompts of a curve that are also answered by beam search (each one a search)
OPEN_ENDED_BEAMS = 3  # the paper's beam size for open-ended evaluation (App. A.2)
OPEN_ENDED_CURVES = ("open_ended_curve", "likelihood_curve", "open_ended_name", "open_ended_caption")


@torch.no_grad()
def open_ended(model, episodes: list[Episode], k: int, tokenizer: Tokenizer, *, word: str = HELDOUT_WORD, seed: int = 0,
               num_beams: int = OPEN_ENDED_BEAMS, max_new_tokens: int = 5, device=None, batch_size: int = 32) -> dict:
    """The k-shot prompts of `evaluate_format` (the same support pictures), answered by beam search instead of scored.

    Likelihood scoring ranks the 16 names only, so it credits a name even where the model would write something else;
    here the model writes freely, as the paper's open-ended evaluations do ("beam search for decoding", Sec. 2.5;
    beam 3, App. A.2), until `<eoc>`. Returns the shares of prompts whose answer is `exact` (the query's name, then
    `<eoc>`), begins with any of the 16 names (`name`), or is a caption of the picture instead (`caption`, a colour
    and a shape as `<image> a red circle` has them), and `likelihood`, the scoring accuracy on the same prompts.
    `batch_size` prompts are written at a time, each as it would be alone.
    """
    from .generation import generate  # generation builds on the model, not on the evaluation

    check_non_negative_int("k", k)
    check_positive_int("num_beams", num_beams)
    check_positive_int("batch_size", batch_size)
    device = get_device(device)
    rng = np.random.default_rng([seed, k, 20])  # evaluate_format's stream: the same support, prompt by prompt
    name_ids = {tokenizer.index[name] for name in NAMES}
    prompts, pictures = [], []
    for ep in episodes:
        chosen = choose_support(ep, k, rng=rng)
        prompts.append(tokenizer.encode(template_words([ep.pool_classes[j] for j in chosen], ep.names, word)))
        pictures.append(torch.cat([ep.pool_images[chosen], ep.query_image[None]]))  # (k+1, 3, H, W)
    tokens = torch.tensor(prompts, device=device)  # (E, n): every prompt has the same length
    images = torch.stack(pictures).to(device)  # (E, k+1, 3, H, W)
    written_rows = []
    for start in range(0, len(episodes), batch_size):  # a batch of prompts at a time, each written as if alone
        out = generate(model, tokens[start : start + batch_size], images[start : start + batch_size],
                       max_new_tokens=max_new_tokens, eoc_id=tokenizer.eoc_id, num_beams=num_beams)  # (b, n+s)
        written_rows += out[:, tokens.shape[1]:].tolist()
    exact, named, captioned = [], [], []
    for ep, written in zip(episodes, written_rows):
        if tokenizer.eoc_id in written:  # the answer, `<eoc>` included when it was written
            written = written[: written.index(tokenizer.eoc_id) + 1]
        answer = tokenizer.index[NAMES[ep.names[ep.query_class]]]
        exact.append(written[:2] == [answer, tokenizer.eoc_id])
        named.append(bool(written) and written[0] in name_ids)
        words = tokenizer.words(written[:-1] if written and written[-1] == tokenizer.eoc_id else written)
        colour, shape = CLASSES[ep.query_class]
        captioned.append(words in ([colour, shape], [shape, "in", colour]))
    scored = evaluate_format(model, episodes, k, tokenizer, word=word, seed=seed, device=device)
    return {"exact": float(np.mean(exact)), "name": float(np.mean(named)), "caption": float(np.mean(captioned)),
            "likelihood": scored["scoring"]}


@torch.no_grad()
def name_attention(model, episodes: list[Episode], tokenizer: Tokenizer, *, k: int = 8, seed: int = 5, device=None) -> torch.Tensor:
    """Where the query's last token looks, per LM layer and head: (layers, h, 2), the mean attention on the names of
    support examples of the query's class, then on the other names (training template; each prompt holds the
    answer, one random support slot showing the query's class where the draw did not). A head with most of its attention on the same-class names is an induction head."""
    check_positive_int("k", k)
    device = get_device(device)
    rng = np.random.default_rng(seed)
    lm = model.lm
    share = torch.zeros(len(lm.blocks), lm.blocks[0].attn.heads, 2)  # (layers, h, same/other)
    caught: list = []
    hooks = [block.attn.register_forward_pre_hook(lambda module, args: caught.append((module, args[0])))
             for block in lm.blocks]
    count = 0
    try:
        for ep in episodes:
            chosen = choose_support(ep, k, rng=rng)
            same_class = [j for j, c in enumerate(ep.pool_classes) if c == ep.query_class]
            if not same_class:
                continue
            if not set(chosen) & set(same_class):  # the prompt must hold the answer: one random slot shows the query's class
                chosen[int(rng.integers(k))] = same_class[int(rng.integers(len(same_class)))]
            classes = [ep.pool_classes[j] for j in chosen]
            tokens = torch.tensor([tokenizer.encode(template_words(classes, ep.names, IS))], device=device)  # (1, n)
            images = torch.cat([ep.pool_images[chosen], ep.query_image[None]])[None].to(device)  # (1, k+1, 3, H, W)
            caught.clear()
            model(tokens, images)
            same = torch.tensor([c == ep.query_class for c in classes])  # (k,)
            name_positions = torch.arange(k) * 4 + 2  # (k,): <image> WORD NAME <eoc>
            for layer, (attn, h) in enumerate(caught):
                q, key, _ = attn.to_qkv(h).chunk(3, dim=-1)  # 3 x (1, n, d)
                q, key = (z.reshape(1, z.shape[1], attn.heads, -1).transpose(1, 2) for z in (q, key))  # 2 x (1, h, n, e)
                scores = q[:, :, -1] @ key.transpose(-1, -2) * q.shape[-1] ** -0.5  # (1, h, 1, n): the last row only
                weights = scores[0, :, 0].softmax(dim=-1).cpu()  # (h, n): the last token sees every position
                at_names = weights[:, name_positions]  # (h, k)
                share[layer, :, 0] += at_names[:, same].sum(-1)
                share[layer, :, 1] += at_names[:, ~same].sum(-1)
            count += 1
    finally:
        for hook in hooks:
            hook.remove()
    if count == 0:
        raise ValueError(f"no episode's pool holds a picture of its query's class; give more episodes or a larger pool")
    return share / count  # (layers, h, 2)


def induction_heads(share: torch.Tensor, *, threshold: float = 0.5) -> list[tuple[int, int]]:
    """The (layer, head) pairs whose attention on same-class names is above `threshold` and 3 times that on the
    other names (`name_attention`'s table); the single most induction-like head if none is."""
    heads = [(int(l), int(h)) for l, h in zip(*torch.nonzero((share[..., 0] > threshold) & (share[..., 0] > 3 * share[..., 1]), as_tuple=True))]
    if heads:
        return heads
    flat = int((share[..., 0] - share[..., 1]).argmax())
    return [(flat // share.shape[1], flat % share.shape[1])]


@torch.no_grad()
def head_effects(model, episodes: list[Episode], tokenizer: Tokenizer, *, k: int = 8, word: str = HELDOUT_WORD,
                 seed: int = 0, device=None) -> torch.Tensor:
    """(layers, h): how far the k-shot accuracy on `episodes` in the template `<image> WORD NAME <eoc>` falls when that
    one head of the language model is zeroed (`zero_attention_heads`). What a head does, measured, where
    `name_attention` reads where it looks. Give it calibration episodes, never those a curve is scored on."""
    check_positive_int("k", k)
    device = get_device(device)
    grids = episode_grids(model, episodes, device=device)
    accuracy = lambda: evaluate_format(model, episodes, k, tokenizer, word=word, seed=seed, device=device, grids=grids)["scoring"]  # noqa: E731
    base = accuracy()
    lm = model.lm
    effects = torch.zeros(len(lm.blocks), lm.blocks[0].attn.heads)  # (layers, h)
    for layer in range(effects.shape[0]):
        for head in range(effects.shape[1]):
            with zero_attention_heads(lm, [(layer, head)]):
                effects[layer, head] = base - accuracy()
    return effects


def heads_by_effect(effects: torch.Tensor, *, share: float = 0.5) -> list[tuple[int, int]]:
    """The (layer, head) whose zeroing costs the most accuracy (`head_effects`' table), and every other head that
    costs at least `share` of that, largest first."""
    best = float(effects.max())
    order = torch.argsort(effects.flatten(), descending=True).tolist()
    keep = [i for i in order if i == order[0] or (best > 0 and float(effects.flatten()[i]) >= share * best)]
    return [(i // effects.shape[1], i % effects.shape[1]) for i in keep]


def heldout_curves(model, tokenizer: Tokenizer, shots, *, num_episodes: int = 500, pool_size: int = 48, seed: int = 0,
                   device=None, max_media: int | None = None) -> dict:
    """The held-out-format and rule-inference curves with every baseline, and the induction heads they ablate.

    Returns {"heldout_format": block, "rule_inference": block, "induction_heads": {...}, "open_ended": {...}} (the
    last: the held-out format's first `OPEN_ENDED_EPISODES` prompts answered by beam search, `open_ended`), each block holding the
    `CURVES`, keyed by str(k), and the chance level; k with k + 1 > `max_media` pictures (a per-image embedding's
    cap) map to None. The heads zeroed in `head_ablated_curve` are picked by their effect on the held-out format
    (`head_effects` on calibration episodes apart from the scored ones); those in `attention_head_ablated_curve` by
    where they look (`name_attention`), to show whether the two readings agree.
    """
    device = get_device(device)
    model = model.to(device).eval()
    naming = make_heldout_episodes(num_episodes, seed=seed, pool_size=pool_size)
    k = 8 if max_media is None else min(8, max_media - 1)  # as many support pictures as the model takes, up to 8
    share = name_attention(model, naming, tokenizer, k=k, device=device)  # (layers, h, 2)
    looked = induction_heads(share)  # the heads that look at same-class names
    # the heads whose zeroing costs the held-out format most, on calibration episodes the curves never score
    calibration = make_heldout_episodes(CALIBRATION_EPISODES, seed=seed + CALIBRATION_SEED, pool_size=pool_size)
    effects = head_effects(model, calibration, tokenizer, k=k, seed=seed, device=device)  # (layers, h)
    heads = heads_by_effect(effects)
    out = {"induction_heads": {"heads": [list(h) for h in heads], "by": "effect", "effect": effects.tolist(),
                               "attention_heads": [list(h) for h in looked],
                               "same_class_name_attention": share[..., 0].tolist(),
                               "other_name_attention": share[..., 1].tolist()}}
    tasks = {"heldout_format": (naming, HELDOUT_WORD), "rule_inference": (make_rule_episodes(num_episodes, seed=seed, pool_size=pool_size), IS)}
    # the held-out format's first prompts, answered by beam search beside likelihood scoring
    answered = {"template": f"{MEDIA_TOKEN} {HELDOUT_WORD} NAME {EOC_TOKEN}", "num_beams": OPEN_ENDED_BEAMS,
                "num_episodes": min(OPEN_ENDED_EPISODES, len(naming)), **{curve: {} for curve in OPEN_ENDED_CURVES}}
    for k in shots:
        fits = max_media is None or k + 1 <= max_media
        got = open_ended(model, naming[:OPEN_ENDED_EPISODES], k, tokenizer, seed=seed, device=device) if fits else {}
        for curve, key in zip(OPEN_ENDED_CURVES, ("exact", "likelihood", "name", "caption")):
            answered[curve][str(k)] = got.get(key)
    out["open_ended"] = answered
    for key, (episodes, word) in tasks.items():
        grids = episode_grids(model, episodes, device=device)
        block = {"curve": {}, "chance": 1.0 / len(NAMES), "knn_curve": {}, "lm_only_curve": {}, "head_ablated_curve": {},
                 "attention_head_ablated_curve": {}, "in_support": {}, "prompt_names_guess": {},
                 "template": f"{MEDIA_TOKEN} {word} NAME {EOC_TOKEN}"}
        for k in shots:
            if max_media is not None and k + 1 > max_media:
                for curve in CURVES:
                    block[curve][str(k)] = None
                continue
            kwargs = dict(word=word, seed=seed, device=device)
            result = evaluate_format(model, episodes, k, tokenizer, grids=grids, **kwargs)
            block["curve"][str(k)] = result["scoring"]
            block["knn_curve"][str(k)] = result["knn"]
            block["in_support"][str(k)] = result["in_support"]
            block["prompt_names_guess"][str(k)] = result["prompt_names_guess"]
            block["lm_only_curve"][str(k)] = evaluate_format(model.lm, episodes, k, tokenizer, lm_only=True, **kwargs)["scoring"]
            for curve, zeroed in (("head_ablated_curve", heads), ("attention_head_ablated_curve", looked)):
                with zero_attention_heads(model.lm, zeroed):
                    block[curve][str(k)] = evaluate_format(model, episodes, k, tokenizer, grids=grids, **kwargs)["scoring"]
        out[key] = block
    return out
