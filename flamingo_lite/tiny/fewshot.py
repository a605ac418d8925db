"""In-context learning, in miniature: a task only the prompt can solve, and the tiny Flamingo learning it from
the examples in its prompt.

Flamingo is "a visual language model for few-shot learning" (Alayrac et al. 2022, arXiv 2204.14198): its
results are accuracies that rise with the number of image-text examples in the prompt (Fig. 2, right; up to 32
shots) from a model trained with at most 5 images per sequence (Sec. 2.3, 2.4). Here every sequence binds *fresh invented
names* to the 12 picture classes (4 colours x 3 shapes), so no name means anything outside its sequence:

    <image> is dax <eoc> <image> is wug <eoc> <image> is          -> dax   (if the last picture is of the first's class)

The names are not in the pictures; only the support examples of the same sequence say which name a class has.

Training sequences are built like the paper's M3W web pages (Sec. 2.4: "a random subsequence of L = 256 tokens
and ... up to the first N = 5 images"): long text with few images. An episode has up to `max_shots` examples; the last 1 to `max_images` - 1 of them and the query are pictures,
the earlier ones are written as text (`red circle is dax <eoc>`), so text precedes the first image and sees no
image. `<eoc>` ends each chunk. A share `p_all_picture` of the episodes has pictures only (robustness), and a
share `p_caption` of the sequences is captioning (`<image> a red circle <eoc>`, the words of `data.caption_words`),
without which the gates stay shut. `p_next`: with that probability a sequence's text attends to the *next* picture
instead of the previous one (the paper's p_next, drawn once per web page, 1/2 there; App. A.3.2, ablated in
Table 10): each picture's marker in `media_locations` moves back to the
first token after the previous picture's `<image>` (position 0 for the first), so the words of a chunk see the
picture that follows them; the `<image>` tokens stay where they are. It is 0 by default: in these episodes
the picture comes before its name, so "the next image" is the wrong one.

Evaluation (`fewshot_curve`) is the paper's: k-shot prompts of support pictures with their names, then the query
picture and `is`; held-out pictures (a separate random stream, new jitter) and held-out name assignments (whole
assignments that never occur in training; see `draw_assignment`). Open-ended greedy generation (the first
generated token is the name and the next is `<eoc>`) and, beside it, scoring the candidate names by likelihood.
`retrieval="rices"` picks the k support examples nearest to the query in frozen vision features (RICES, Sec. 3),
`"random"` picks them at random.

Shapes, in einops notation: N sequences, T media slots, 3 colour channels, H=W picture size, n tokens, V vocabulary.
"""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..device import get_device
from ..files import load_model_file, model_file_bytes, model_file_error, write_bytes_atomic
from ..masks import MEDIA_TOKEN, media_locations_from_tokens
from ..validation import (
    check_non_negative_int, check_non_negative_number, check_positive_int, check_positive_number, check_probability, check_seed,
)
from .data import CAPTION_WORDS, COLOURS, EOC_TOKEN, PAD_TOKEN, SHAPES, Tokenizer, caption_words, render_shape
from .language_model import LMConfig, TinyLM
from .model import Flamingo, FlamingoConfig, unfreeze
from .training import seed_everything, train_flamingo, train_language_model

NAMES = ("dax", "wug", "blick", "fep", "toma", "zup", "kiki", "bouba", "mip", "lorp", "gazz", "vit", "snar", "quib", "jent", "plo")
CLASSES = tuple((colour, shape) for colour in COLOURS for shape in SHAPES)  # 12 picture classes
IS = "is"
TEXT_TASK_SHOTS = 8  # the text task that measures the language model (and its forgetting)


LINK_WORDS = ("of", "as", "to", "on", "at", "by")  # more words a training episode may put between a picture and its name
# `--many-links`: one of these per training episode ("" for none), never the held-out template's `a`
MANY_LINKS = (IS, "in", "", *LINK_WORDS)
# `--colliding-links`: links that are also the first word of some captions (`<image> the red circle <eoc>`), so after
# `<image> the` a caption follows in one sequence and a name in another, and only the sequence says which, as
# after `<image> a` in the held-out template; `a` itself is still never a link
ARTICLES = ("the", "one", "this")
COLLIDING_LINKS = (*MANY_LINKS, *ARTICLES)
CAPTION_ARTICLES = ("a", *ARTICLES)  # the first word of a caption in that config, one drawn per caption


def fewshot_tokenizer(links: tuple = (IS,)) -> Tokenizer:
    """`data.Tokenizer` with the task's words added: `is` and the invented names (one token each), then any word
    of `links` (`FewShotSetup.links`) not yet in it, so the default vocabulary is the same with or without them."""
    words = CAPTION_WORDS + COLOURS + SHAPES + (IS,) + NAMES
    return Tokenizer(words=words + tuple(dict.fromkeys(w for w in links if w and w not in words)))


def draw_assignment(rng: np.random.Generator) -> list[int]:
    """A name index for each of the 12 classes, all different, every injective assignment equally likely.

    Uniform on purpose: if some class-name pairs were kept for evaluation only, training would teach the model
    that class c is never called n, a prior that pushes 0-shot accuracy on exactly those pairs below chance
    (measured: 0.003 against 1/16). An evaluation episode's assignment is held out as a whole instead: there are
    16!/4! (about 8.7e11) of them, and a test checks that none of the evaluation assignments occurs in training.
    """
    return [int(n) for n in rng.permutation(len(NAMES))[: len(CLASSES)]]


@dataclass
class FewShotData:
    """Padded sequences. images (N, T, 3, H, W), zeros in unused slots; tokens (N, n) long, `<pad>` on the right;
    media_locations (N, n) bool; num_images (N,) long; kinds: 'episode' or 'caption' per sequence; assignments:
    the episode's name index per class (a tuple), None for a caption."""

    images: torch.Tensor
    tokens: torch.Tensor
    media_locations: torch.Tensor
    num_images: torch.Tensor
    kinds: list = field(repr=False)
    assignments: list = field(repr=False)

    def __len__(self) -> int:
        return self.tokens.shape[0]

    def __getitem__(self, index) -> "FewShotData":
        index = torch.as_tensor([index] if isinstance(index, int) else index, dtype=torch.long)
        rows = index.tolist()
        return FewShotData(self.images[index], self.tokens[index], self.media_locations[index], self.num_images[index],
                           [self.kinds[i] for i in rows], [self.assignments[i] for i in rows])

    def to(self, device) -> "FewShotData":
        return FewShotData(self.images.to(device), self.tokens.to(device), self.media_locations.to(device), self.num_images.to(device), self.kinds, self.assignments)


def class_words(class_index: int) -> list[str]:
    """`['red', 'circle']`: the words a text example uses for a class."""
    colour, shape = CLASSES[class_index]
    return [colour, shape]


def shot_words(class_index: int, name: str, *, picture: bool, link: str = IS) -> list[str]:
    """One example: `<image> is dax <eoc>` (picture) or `red circle is dax <eoc>` (text); `link` is the word
    between the picture (or its words) and the name, none if ""."""
    head = [MEDIA_TOKEN] if picture else class_words(class_index)
    return head + ([link] if link else []) + [name, EOC_TOKEN]


def next_media_locations(words: list[str]) -> list[bool]:
    """The p_next markers: each picture's marker at the first token after the previous `<image>` (0 for the first)."""
    marks = [False] * len(words)
    start = 0
    for i, w in enumerate(words):
        if w == MEDIA_TOKEN:
            marks[start] = True
            start = i + 1
    return marks


def make_training_data(
    num_sequences: int,
    *,
    seed: int = 0,
    image_size: int = 16,
    max_images: int = 5,
    max_shots: int = 32,
    p_all_picture: float = 0.3,
    p_caption: float = 0.3,
    p_next: float = 0.0,
    text_only: bool = False,
    tokenizer: Tokenizer | None = None,
    links: tuple = (IS,),
    articles: tuple = ("a",),
    p_attribute: float = 0.0,
) -> FewShotData:
    """Interleaved training sequences, deterministic from `seed` (see the module doc).

    `text_only=True` gives the language model's pretraining text: the same episodes with every picture replaced
    by its class words, and captions without their pictures (`<image> a red circle <eoc>`).
    `links`: the words an episode may put between a picture and its name, one drawn per episode and kept through
    it (`<image> is dax`, `<image> in dax`, `""`: `<image> dax`); with one link no draw is made, so the default
    data are the same as without the argument.
    `articles`: the first word of a caption, one drawn per caption (`<image> the red circle <eoc>`); with one, no
    draw is made, as for `links`.
    `p_attribute`: the share of caption sequences that name one attribute of each picture, colour or shape, drawn
    per sequence (`<image> a red <eoc> <image> a blue <eoc>`), so that colour and shape each pay on their own; at 0
    no draw is made, so the default data are the same as without the argument.
    """
    num_sequences = check_positive_int("num_sequences", num_sequences)
    check_positive_int("max_images", max_images)
    check_positive_int("max_shots", max_shots)
    if max_images < 2:
        raise ValueError(f"max_images must be at least 2 (a support picture and the query), got {max_images}")
    links, articles = tuple(links), tuple(articles)
    if not links or any(not isinstance(w, str) for w in links):
        raise ValueError(f"links must be a non-empty tuple of words (\"\" for none), got {links!r}")
    if not articles or any(not isinstance(w, str) or not w for w in articles):
        raise ValueError(f"articles must be a non-empty tuple of words, got {articles!r}")
    for name, p in (("p_all_picture", p_all_picture), ("p_caption", p_caption), ("p_next", p_next), ("p_attribute", p_attribute)):
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"{name} must lie in [0, 1], got {p}")
    tok = tokenizer if tokenizer is not None else fewshot_tokenizer()
    rng = np.random.default_rng(seed)
    images = np.zeros((num_sequences, max_images, 3, image_size, image_size), dtype=np.float32)  # (N, T, 3, H, W)
    rows, marks, counts, kinds, assignments = [], [], [], [], []
    for i in range(num_sequences):
        pictures: list[int] = []  # the class of each picture, in order
        if rng.random() < p_caption:
            kinds.append("caption")
            assignments.append(None)
            words = []
            # the one attribute this sequence's captions name (None: both), drawn only when p_attribute > 0
            named = ("colour", "shape")[int(rng.integers(2))] if p_attribute > 0 and rng.random() < p_attribute else None
            for _ in range(int(rng.integers(1, max_images + 1))):
                c = int(rng.integers(len(CLASSES)))
                caption = caption_words(*CLASSES[c])  # ['a', 'red', 'circle']
                if named is not None:
                    caption = [caption[0], CLASSES[c][0] if named == "colour" else CLASSES[c][1]]  # ['a', 'red']
                if len(articles) > 1:
                    caption[0] = articles[int(rng.integers(len(articles)))]
                words += [MEDIA_TOKEN, *caption, EOC_TOKEN]
                pictures.append(c)
        else:
            kinds.append("episode")
            names = draw_assignment(rng)
            assignments.append(tuple(names))
            num_pictures = int(rng.integers(2, max_images + 1))  # support pictures and the query
            if rng.random() < p_all_picture:
                num_shots = num_pictures - 1
            else:
                num_shots = int(rng.integers(num_pictures - 1, max_shots + 1))
            shots = [int(c) for c in rng.integers(len(CLASSES), size=num_shots)]
            # the query is usually of a class the examples name, so most episodes can be solved
            query = shots[int(rng.integers(num_shots))] if shots and rng.random() < 0.9 else int(rng.integers(len(CLASSES)))
            first_picture = num_shots - (num_pictures - 1)
            link = links[0] if len(links) == 1 else links[int(rng.integers(len(links)))]
            words = []
            for j, c in enumerate(shots):
                picture = j >= first_picture and not text_only
                words += shot_words(c, NAMES[names[c]], picture=picture, link=link)
                if picture:
                    pictures.append(c)
            words += shot_words(query, NAMES[names[query]], picture=not text_only, link=link)
            if not text_only:
                pictures.append(query)
        if text_only and kinds[-1] == "caption":
            pictures = []  # the caption's words stay, its pictures go
        for j, c in enumerate(pictures):
            images[i, j] = render_shape(CLASSES[c][1], CLASSES[c][0], image_size=image_size, rng=rng)
        rows.append(words)
        use_next = not text_only and p_next > 0 and rng.random() < p_next
        marks.append(next_media_locations(words) if use_next else [w == MEDIA_TOKEN for w in words])
        counts.append(len(pictures))
    n = max(len(r) for r in rows)
    tokens = torch.tensor([tok.encode(r + [PAD_TOKEN] * (n - len(r))) for r in rows], dtype=torch.long)  # (N, n)
    locations = torch.tensor([m + [False] * (n - len(m)) for m in marks], dtype=torch.bool)  # (N, n)
    if text_only:
        locations = torch.zeros_like(locations)  # (N, n): no pictures at all
    return FewShotData(torch.from_numpy(images), tokens, locations, torch.tensor(counts, dtype=torch.long), kinds, assignments)


# ----------------------------------------------------------------------------------------------------------------
# Evaluation episodes and prompts


@dataclass
class Episode:
    """A held-out episode: a pool of labelled support pictures and a query picture, with the episode's names.

    pool_images (P, 3, H, W), pool_classes (P,), query_image (3, H, W), query_class, names: name index per class
    (an assignment drawn from the evaluation's own stream, so never one of training's).
    """

    pool_images: torch.Tensor
    pool_classes: list
    query_image: torch.Tensor
    query_class: int
    names: list


def make_heldout_episodes(num_episodes: int, *, seed: int = 0, pool_size: int = 48, image_size: int = 16) -> list[Episode]:
    """Held-out episodes from their own random stream (new pictures, new jitter, new name assignments)."""
    check_positive_int("num_episodes", num_episodes)
    check_positive_int("pool_size", pool_size)
    stream = np.random.SeedSequence([seed, 12]).spawn(1)[0]  # independent of every training stream
    rng = np.random.default_rng(stream)
    episodes = []
    for _ in range(num_episodes):
        query = int(rng.integers(len(CLASSES)))
        names = draw_assignment(rng)
        pool_classes = [int(c) for c in rng.integers(len(CLASSES), size=pool_size)]
        pool = np.stack([render_shape(CLASSES[c][1], CLASSES[c][0], image_size=image_size, rng=rng) for c in pool_classes])
        q = render_shape(CLASSES[query][1], CLASSES[query][0], image_size=image_size, rng=rng)
        episodes.append(Episode(torch.from_numpy(pool), pool_classes, torch.from_numpy(q), query, names))
    return episodes


def choose_support(episode: Episode, k: int, *, retrieval: str = "random", rng: np.random.Generator | None = None, features=None) -> list[int]:
    """Indices of k pool pictures: at random, or the k nearest to the query in vision features (RICES).

    RICES orders them from least to most similar, so the most similar example is nearest the query (as the paper).
    `features`: (P+1, f) vision features of the pool and then the query (needed for "rices").
    """
    if k > len(episode.pool_classes):
        raise ValueError(f"k ({k}) must be at most the pool size ({len(episode.pool_classes)})")
    if retrieval == "random":
        rng = rng if rng is not None else np.random.default_rng(0)
        return [int(i) for i in rng.choice(len(episode.pool_classes), size=k, replace=False)]
    if retrieval == "rices":
        if features is None:
            raise ValueError("retrieval='rices' needs features (P+1, f): the pool's vision features, then the query's")
        f = F.normalize(features, dim=-1)  # (P+1, f)
        similarity = f[:-1] @ f[-1]  # (P,)
        nearest = torch.argsort(similarity, descending=True)[:k].tolist()  # most similar first
        return [int(i) for i in reversed(nearest)]
    raise ValueError(f"retrieval must be 'random' or 'rices', got {retrieval!r}")


def build_prompt(support_classes, names, tokenizer: Tokenizer) -> list[int]:
    """The k-shot prompt's ids: `<image> is NAME <eoc>` per support picture, then `<image> is` for the query.

    support_classes: the class index of each support picture, in order; names: the name index of each class.
    """
    words = []
    for c in support_classes:
        words += shot_words(int(c), NAMES[names[int(c)]], picture=True)
    words += [MEDIA_TOKEN, IS]
    return tokenizer.encode(words)


def score_candidates(logits_last: torch.Tensor, candidate_ids) -> torch.Tensor:
    """Log-likelihood of each one-token candidate after the prompt: logits_last (b, V), candidate_ids (C,) -> (b, C).

    Log-softmax over the whole vocabulary, then the candidates' entries: the model's own probabilities, not
    renormalised over the candidates (the ranking is the same either way).
    """
    if logits_last.ndim != 2:
        raise ValueError(f"logits_last must have shape (batch, vocab), got {tuple(logits_last.shape)}")
    ids = torch.as_tensor(candidate_ids, dtype=torch.long, device=logits_last.device)  # (C,)
    return logits_last.log_softmax(dim=-1)[:, ids]  # (b, C)


def likeliest_name(logits_last: torch.Tensor, tokenizer: Tokenizer) -> torch.Tensor:
    """The token id of the likeliest of the 16 names after each prompt: logits_last (b, V) -> (b,) long. Every
    accuracy of a naming prompt (Flamingo's, the blind language model's, the text task's) is this against the answer."""
    name_ids = torch.tensor([tokenizer.index[name] for name in NAMES], device=logits_last.device)  # (16,)
    return name_ids[score_candidates(logits_last, name_ids).argmax(-1)]  # (b,)


@torch.no_grad()
def episode_grids(model: Flamingo, episodes: list[Episode], *, device=None) -> list[torch.Tensor]:
    """The frozen vision encoder's grid of every pool picture and the query, once per episode: (P+1, g, d) each.

    Every k and both retrievals reuse them, so the encoder runs once per picture, not once per prompt."""
    device = get_device(device)
    return [model.vision(torch.cat([ep.pool_images, ep.query_image[None]]).to(device))[:, 0] for ep in episodes]  # (P+1, g, d)


@torch.no_grad()
def score_batch(model, tokens: torch.Tensor, features: torch.Tensor | None, tokenizer: Tokenizer, *, lm_only: bool = False,
                generate: bool = False, batch_size: int = 64) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The next-token logits after each prompt, and (`generate=True`) the greedy token after the greedy first one.

    tokens (E, n) long, prompts of one length whose `<image>` tokens mark their pictures; features (E, t, g, d):
    the frozen encoder's grid of each prompt's t pictures, in order (None with `lm_only`, where `model` is a
    `TinyLM` reading the same tokens blind). Returns logits (E, V) and after (E,) long or None. Every evaluation
    (`evaluate_shots`, the held-out formats of `flamingo_lite.tiny.heldout`) scores its prompts here.
    """
    all_logits, all_after = [], []
    for start in range(0, tokens.shape[0], batch_size):
        part = slice(start, start + batch_size)
        prompt_marks = tokens[part] == tokenizer.media_id  # (b, n): the prompt's pictures
        media = None if lm_only else model.resampler(features[part])  # (b, t, L, d)

        def run(t):
            if lm_only:
                return model(t)
            # a generated token is never a picture, even if the model writes `<image>`
            marks = torch.cat([prompt_marks, torch.zeros_like(t[:, prompt_marks.shape[1]:], dtype=torch.bool)], dim=1)  # (b, n')
            return model(t, media=media, media_locations=marks)

        logits = run(tokens[part])[:, -1]  # (b, V)
        all_logits.append(logits)
        if generate:
            first = logits.argmax(-1)  # (b,)
            all_after.append(run(torch.cat([tokens[part], first[:, None]], dim=1))[:, -1].argmax(-1))  # (b,)
    return torch.cat(all_logits), (torch.cat(all_after) if generate else None)  # (E, V), (E,)


@torch.no_grad()
def evaluate_shots(
    model, episodes: list[Episode], k: int, tokenizer: Tokenizer, *, retrieval: str = "random", seed: int = 0, device=None,
    lm_only: bool = False, grids: list | None = None,
) -> dict:
    """Accuracy of k-shot prompts on `episodes`: `generation` (greedy: the name, then `<eoc>`), `scoring` (the most
    likely of the 16 names), `in_support` (scoring, on episodes whose query class is among the support pictures,
    None if none is), `in_support_fraction`. `lm_only`: `model` is a `TinyLM` that reads the same tokens blind.
    `grids`: `episode_grids(model, episodes)`, computed here when not given.

    RICES compares the pictures' features mean-pooled over the grid, as the contrastive pretraining pools them
    (App. B.1.3), so where the object sits does not count."""
    device = get_device(device)
    if lm_only and retrieval != "random":
        raise ValueError(f"the blind language model has no vision features to retrieve with: retrieval must be 'random', got {retrieval!r}")
    if not lm_only and grids is None:
        grids = episode_grids(model, episodes, device=device)
    rng = np.random.default_rng([seed, k])
    prompts, pictures, answers, inside = [], [], [], []
    for i, ep in enumerate(episodes):
        features = grids[i].mean(dim=1) if retrieval == "rices" else None  # (P+1, d)
        chosen = choose_support(ep, k, retrieval=retrieval, rng=rng, features=features)
        classes = [ep.pool_classes[i] for i in chosen]
        prompts.append(build_prompt(classes, ep.names, tokenizer))
        if not lm_only:
            pictures.append(grids[i][chosen + [len(ep.pool_classes)]])  # (k+1, g, d): the support, then the query
        answers.append(tokenizer.index[NAMES[ep.names[ep.query_class]]])
        inside.append(ep.query_class in classes)
    tokens = torch.tensor(prompts, dtype=torch.long, device=device)  # (E, n): every prompt has the same length
    features = None if lm_only else torch.stack(pictures)  # (E, k+1, g, d)
    answers_t = torch.tensor(answers, device=device)  # (E,)
    logits, after = score_batch(model, tokens, features, tokenizer, lm_only=lm_only, generate=True)  # (E, V), (E,)
    score_ok_t = (likeliest_name(logits, tokenizer) == answers_t).float()  # (E,)
    gen_ok_t = ((logits.argmax(-1) == answers_t) & (after == tokenizer.eoc_id)).float()  # (E,)
    inside_t = torch.tensor(inside, device=device)
    return {
        "generation": float(gen_ok_t.mean()),
        "scoring": float(score_ok_t.mean()),
        "in_support": float(score_ok_t[inside_t].mean()) if bool(inside_t.any()) else None,
        "in_support_fraction": float(inside_t.float().mean()),
    }


@torch.no_grad()
def text_task_accuracy(lm: TinyLM, episodes: list[Episode], tokenizer: Tokenizer, *, k: int = TEXT_TASK_SHOTS, device=None) -> float:
    """The language model's own task, in text: k text examples from the pool, then the query's class words and `is`."""
    device = get_device(device)
    rng = np.random.default_rng([k, 99])
    prompts, answers = [], []
    for ep in episodes:
        chosen = choose_support(ep, k, rng=rng)
        words = []
        for i in chosen:
            c = ep.pool_classes[i]
            words += shot_words(c, NAMES[ep.names[c]], picture=False)
        words += class_words(ep.query_class) + [IS]
        prompts.append(tokenizer.encode(words))
        answers.append(tokenizer.index[NAMES[ep.names[ep.query_class]]])
        if ep.query_class not in [ep.pool_classes[i] for i in chosen]:
            prompts.pop(), answers.pop()  # only episodes the text says the answer for
    return text_name_accuracy(lm, prompts, answers, tokenizer, device=device)


def text_name_accuracy(lm: TinyLM, prompts: list[list[int]], answers: list[int], tokenizer: Tokenizer, *, device) -> float:
    """The share of text prompts (of one length) whose likeliest next name, among the 16, is the answer's id."""
    logits = lm.to(device).eval()(torch.tensor(prompts, dtype=torch.long, device=device))[:, -1]  # (E, V)
    return float((likeliest_name(logits, tokenizer) == torch.tensor(answers, device=device)).float().mean())


# ----------------------------------------------------------------------------------------------------------------
# The recipe


@dataclass
class FewShotSetup:
    """The knobs of a whole few-shot run (`run_fewshot`), recorded in the history's `config`."""

    seed: int = 0
    lm_steps: int = 1000
    lm_lr: float = 3e-3
    lm_batch_size: int = 32
    steps: int = 1500
    batch_size: int = 32
    lr: float = 3e-3
    gate_lr: float = 3e-2
    weight_decay: float = 0.1
    num_train: int = 4000
    num_heldout: int = 500  # a fixed guess scores 1/16 +- 0.011 (one standard error) on 500 episodes
    pool_size: int = 48  # labelled pictures per held-out episode, from which the k support pictures are drawn
    max_shots: int = 40
    max_images: int = 5
    p_all_picture: float = 0.3
    p_caption: float = 0.3
    p_next: float = 0.0
    p_attribute: float = 0.0  # the share of caption sequences naming one attribute only (make_training_data)
    vision: str = "pretrained"  # FlamingoConfig.vision: the contrastively pretrained encoder, or "handmade"
    token_shift: int = 4
    positions: str = "none"  # the LM's position signal: "none" lets prompts grow past the training length
    media_embedding: str = "none"  # "per_media": the comparison with a per-image embedding (caps k + 1 at max_images)
    only_attend_immediate_media: bool = True
    freeze_lm: bool = True
    bucket_flamingo: bool = False  # length-bucketed batches for the Flamingo stage too (faster, but learned less)
    log_every: int = 25
    shots: tuple = (0, 1, 2, 4, 8, 16, 32)
    links: tuple = (IS,)  # the words between a picture and its name in training, one per episode (make_training_data)
    articles: tuple = ("a",)  # the first word of a caption in training, one per caption (make_training_data)

    def __post_init__(self):  # every number in range, named, before any work
        self.links, self.articles = tuple(self.links), tuple(self.articles)
        allowed = set(fewshot_tokenizer().index) | set(LINK_WORDS) | set(ARTICLES) | {""}
        if not self.links or any(not isinstance(w, str) or w not in allowed for w in self.links):
            raise ValueError(f"FewShotSetup.links must be words of the few-shot vocabulary, of LINK_WORDS {LINK_WORDS} "
                             f"or of ARTICLES {ARTICLES} (\"\" for none), got {self.links!r}")
        if not self.articles or any(w not in ("a", *self.links) for w in self.articles):
            raise ValueError(f"FewShotSetup.articles must be 'a' or words of FewShotSetup.links (so that they are in the "
                             f"vocabulary), got {self.articles!r}")
        for name in ("lm_steps", "lm_batch_size", "steps", "batch_size", "num_train", "num_heldout", "pool_size",
                     "max_shots", "max_images", "log_every"):
            check_positive_int(f"FewShotSetup.{name}", getattr(self, name))
        for name in ("lm_lr", "lr", "gate_lr"):
            check_positive_number(f"FewShotSetup.{name}", getattr(self, name))
        check_non_negative_number("FewShotSetup.weight_decay", self.weight_decay)
        for name in ("p_all_picture", "p_caption", "p_next", "p_attribute"):
            check_probability(f"FewShotSetup.{name}", getattr(self, name))
        check_non_negative_int("FewShotSetup.token_shift", self.token_shift)
        check_seed("FewShotSetup.seed", self.seed)
        if self.max_images < 2:
            raise ValueError(f"FewShotSetup.max_images must be at least 2 (a support picture and the query), got {self.max_images}")
        shots = tuple(self.shots)
        if not shots or any(isinstance(k, bool) or not isinstance(k, int) or not 0 <= k <= self.pool_size for k in shots):
            raise ValueError(f"FewShotSetup.shots must be numbers of shots from 0 to pool_size={self.pool_size} "
                             f"(each prompt draws its support pictures from the pool), got {self.shots!r}")


def build_model(setup: FewShotSetup, lm: TinyLM, tokenizer: Tokenizer) -> Flamingo:
    """The tiny Flamingo on top of `lm`, with the resampler's media embedding as `setup` says."""
    config = FlamingoConfig(
        vocab_size=len(tokenizer), max_len=lm.config.max_len, media_token_id=tokenizer.media_id,
        num_media_embeds=setup.max_images, only_attend_immediate_media=setup.only_attend_immediate_media,
        media_embedding=setup.media_embedding, vision=setup.vision,
    )
    model = Flamingo(config, lm=lm)
    if not setup.freeze_lm:
        unfreeze(model.lm)
    return model


def fewshot_curve(model: Flamingo, episodes, tokenizer, shots, *, retrieval="random", device=None, lm_only=False, max_media=None, grids=None) -> dict:
    """k -> `evaluate_shots` result for every k in `shots`; k with k + 1 > `max_media` pictures map to None."""
    if not lm_only and grids is None:
        grids = episode_grids(model, episodes, device=device)
    return {
        str(k): (None if max_media is not None and k + 1 > max_media else
                 evaluate_shots(model, episodes, k, tokenizer, retrieval=retrieval, device=device, lm_only=lm_only, grids=grids))
        for k in shots
    }


def run_fewshot(setup: FewShotSetup | None = None, *, device=None, progress: bool = True, lm: TinyLM | None = None):
    """The whole recipe: the LM on text alone (or the given `lm`), frozen, then Flamingo on interleaved sequences,
    then the shots curves. Returns `(model, history)`."""
    setup = setup if setup is not None else FewShotSetup()
    device = get_device(device)
    start = time.perf_counter()
    tok = fewshot_tokenizer(setup.links)
    seed_everything(setup.seed)
    kwargs = dict(max_images=setup.max_images, max_shots=setup.max_shots, p_all_picture=setup.p_all_picture, p_caption=setup.p_caption,
                  tokenizer=tok, links=setup.links, articles=setup.articles, p_attribute=setup.p_attribute)
    text = make_training_data(setup.num_train, seed=setup.seed * 2, text_only=True, **kwargs)
    train = make_training_data(setup.num_train, seed=setup.seed * 2 + 1, p_next=setup.p_next, **kwargs)
    episodes = make_heldout_episodes(setup.num_heldout, seed=setup.seed, pool_size=setup.pool_size)
    # the longest prompt: k pictures (4 tokens each) + `<image> is` + one generated token, or k text examples (5 each)
    max_len = max(text.tokens.shape[1], train.tokens.shape[1], 4 * max(setup.shots) + 3, 5 * max(TEXT_TASK_SHOTS, *setup.shots) + 3)
    lm_losses, lm_seconds = [], 0.0
    if lm is None:
        lm = TinyLM(LMConfig(vocab_size=len(tok), max_len=max_len, token_shift=setup.token_shift, positions=setup.positions))
        lm_losses = train_language_model(lm, text, steps=setup.lm_steps, batch_size=setup.lm_batch_size, lr=setup.lm_lr,
                                         seed=setup.seed, device=device, progress=progress, pad_id=tok.pad_id, bucket_by_length=True)
        lm_seconds = time.perf_counter() - start
    text_before = text_task_accuracy(lm, episodes, tok, device=device)
    seed_everything(setup.seed + 1)
    model = build_model(setup, lm, tok).to(device)
    history = train_flamingo(
        model, train, steps=setup.steps, batch_size=setup.batch_size, lr=setup.lr, gate_lr=setup.gate_lr,
        weight_decay=setup.weight_decay, log_every=setup.log_every, seed=setup.seed, device=device, progress=progress, pad_id=tok.pad_id,
        bucket_by_length=setup.bucket_flamingo, cache_vision=True,
    )
    train_seconds = time.perf_counter() - start
    max_media = setup.max_images if setup.media_embedding == "per_media" else None
    grids = episode_grids(model, episodes, device=device)
    curve = fewshot_curve(model, episodes, tok, setup.shots, device=device, max_media=max_media, grids=grids)
    rices = fewshot_curve(model, episodes, tok, [k for k in setup.shots if k > 0], retrieval="rices", device=device, max_media=max_media, grids=grids)
    blind = fewshot_curve(model.lm, episodes, tok, setup.shots, device=device, lm_only=True)
    from .heldout import heldout_curves  # heldout builds on this module

    heldout = heldout_curves(model, tok, setup.shots, num_episodes=setup.num_heldout, pool_size=setup.pool_size,
                             seed=setup.seed, device=device, max_media=max_media)
    history.update(
        shots_curve={k: (v["scoring"] if v else None) for k, v in curve.items()},
        shots_curve_generation={k: (v["generation"] if v else None) for k, v in curve.items()},
        in_support_accuracy={k: (v["in_support"] if v else None) for k, v in curve.items()},
        in_support_fraction={k: (v["in_support_fraction"] if v else None) for k, v in curve.items()},
        rices_curve={k: (v["scoring"] if v else None) for k, v in rices.items()},
        text_only_lm_curve={k: v["scoring"] for k, v in blind.items()},
        chance=1.0 / len(NAMES),
        **heldout,
        lm_text_accuracy_before=text_before,
        lm_text_accuracy_after=text_task_accuracy(model.lm, episodes, tok, device=device),
        lm_loss=lm_losses,
        lm_seconds=lm_seconds,
        train_seconds=train_seconds,
        seconds=time.perf_counter() - start,
        device=str(device),
        config={"fewshot": {**asdict(setup), "shots": list(setup.shots), "links": list(setup.links),
                            "articles": list(setup.articles)}, "lm_max_len": max_len},
    )
    return model, history


MODEL_FILE = "a few-shot model file written by python -m flamingo_lite.train --task fewshot --save-model (save_model)"


def model_bytes(model: Flamingo, history: dict) -> bytes:
    """The trained few-shot model as the bytes of its file: its weights (the frozen vision encoder's too), the
    language model's config and the run's `FewShotSetup`, so `load_model` rebuilds exactly this model."""
    saved = {"setup": history["config"]["fewshot"], "lm_config": asdict(model.lm.config),
             "state_dict": model.state_dict(), "shots_curve": history.get("shots_curve")}
    return model_file_bytes(saved)


def save_model(model: Flamingo, history: dict, path) -> None:
    """Write the trained few-shot model to `path` atomically (`model_bytes`), its folders made."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    write_bytes_atomic(path, model_bytes(model, history))


def load_model(path, *, device=None) -> tuple[Flamingo, FewShotSetup]:
    """The model `save_model` wrote, in eval mode, and the setup it was trained with.

    A file that is not one `save_model` wrote is a ValueError naming the path (`flamingo_lite.files.load_model_file`).
    """
    saved = load_model_file(path, MODEL_FILE, keys=("setup", "lm_config", "state_dict"))
    try:
        setup = FewShotSetup(**{**saved["setup"], "shots": tuple(saved["setup"]["shots"])})
        model = build_model(setup, TinyLM(LMConfig(**saved["lm_config"])), fewshot_tokenizer(setup.links))
        model.load_state_dict(saved["state_dict"])
    except (KeyError, TypeError, ValueError, RuntimeError, AttributeError) as err:  # contents that do not fit the model
        raise model_file_error(path, MODEL_FILE, f"its contents do not fit the model ({err.__class__.__name__}: {err})") from None
    return model.to(get_device(device)).eval(), setup


def run_from_command_line(args, argv=None) -> tuple[dict, str, bytes | None]:
    """`python -m flamingo_lite.train --task fewshot --out FILE [--seed S] [--shots 0,1,2,...] [--many-links] [--save-model PT]`:
    train and evaluate (and keep the model, for lesson 12).

    Returns the JSON history, a one-line summary and the model file's bytes (None without `--save-model`);
    `flamingo_lite.tiny.train` writes them.

    `--steps`, `--lm-steps`, `--log-every` and `--vision` are used when given; otherwise this task's own defaults (`FewShotSetup`).
    """
    import sys

    given = {a.split("=")[0] for a in (sys.argv[1:] if argv is None else argv) if a.startswith("--")}
    setup = FewShotSetup(seed=args.seed, shots=tuple(args.shots))
    if "--vision" in given:
        setup = replace(setup, vision=args.vision)
    if "--log-every" in given:
        setup = replace(setup, log_every=args.log_every)
    if "--steps" in given:
        setup = replace(setup, steps=args.steps)
    if "--lm-steps" in given:
        setup = replace(setup, lm_steps=args.lm_steps)
    if getattr(args, "many_links", False):
        setup = replace(setup, links=MANY_LINKS)
    if getattr(args, "colliding_links", False):
        setup = replace(setup, links=COLLIDING_LINKS, articles=CAPTION_ARTICLES)
    setup = replace(setup, only_attend_immediate_media=args.only_attend_immediate_media)
    model, history = run_fewshot(setup, device=args.device, progress=args.progress)
    model_file = None if args.save_model is None else model_bytes(model.cpu(), history)
    history.pop("loss_every_step", None)
    history["config"]["threads"] = args.threads
    curve = " ".join(f"{k}:{v:.2f}" for k, v in history["shots_curve"].items() if v is not None)
    return history, f"shots curve {curve} (chance {history['chance']:.3f}), {history['seconds']:.1f} s", model_file
