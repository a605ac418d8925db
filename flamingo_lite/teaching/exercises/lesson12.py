"""Checks for lesson 12's three exercises: the k-shot prompt builder, the likelihood scorer and the
nearest-neighbour baseline.

- `build_prompt(support_classes, names, tokenizer)`: the ids of `<image> is NAME <eoc>` for each support picture,
  then `<image> is` for the query. The answer is `fewshot.build_prompt`; a wrong prompt is compared with the usual
  mistakes on the same episode (the `<eoc>` left out, the query's `is` or its `<image>` left out, a class's own
  index used as its name instead of the episode's assignment, the support written as words instead of pictures,
  the support in reverse or sorted order, the last example left out, the word before the picture, the word
  ignored or used for the query only, the class's words added, `<eoc>` before the name, the names looked up the
  other way), so the verdict names the mistake; a builder that gives another prompt when called again (a default
  list that grows) is named, and any other wrong prompt is shown with its first wrong word.
- `score_names(logits, candidate_ids)`: from the model's logits over the whole prompt (b, n, V), the
  log-probability of each candidate name as the next token (b, C). The answer is `fewshot.score_candidates` at the
  last position; the usual mistakes (the first position instead of the last, raw logits, probabilities instead of
  log-probabilities, log_softmax over positions or over the batch, renormalised over the candidates only, the
  first C vocabulary entries instead of the candidates' ids, the sign flipped, averaged over positions) are
  computed on the same logits; indices instead of scores, and scores in another dtype, are named before.
- `nearest_support(support, query)`: the index of the support picture whose grid-averaged frozen features have the
  largest cosine with the query's. The answer is `heldout.nearest_support`; on 40 random episodes whose pictures
  have features of very different sizes, the learner's choices are compared with those of the usual mistakes (no
  normalisation, the farthest picture, the grid flattened instead of averaged, max-pooled, the features averaged
  instead of the cells, cosines per cell, normalised across pictures, the cosine over the pictures' axis, the
  Euclidean distance of unnormalised features, the pictures counted from the end), so the verdict names the
  mistake. Any single integer is an index.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ...tiny import fewshot, heldout
from . import (Mistake, compare, fail, passed, record_verdicts, register_hints, register_nudges, run_learner,
               run_untouched)

register_hints({
    "12.nearest": "Average each picture's features over its grid cells (`support.mean(dim=1)`, (k, d); "
                  "`query.mean(dim=0)`, (d,)), normalise both with `F.normalize(..., dim=-1)`, then the cosines are one "
                  "matrix-vector product, (k,); return the index of the largest as a Python int, `int(....argmax())`.",
    "12.prompt": "Start with `words = []`; for each class `c` in `support_classes` add `['<image>', word, "
                 "NAMES[names[c]], '<eoc>']` (the episode's name for that class, not `NAMES[c]`); then add "
                 "`['<image>', word]` for the query and return `tokenizer.encode(words)`.",
    "12.score": "The prediction for the token after the prompt is at the *last* position: `logits[:, -1]` (b, V). "
                "Take `log_softmax(dim=-1)` over the whole vocabulary, then the candidates' columns: "
                "`[:, candidate_ids]` -> (b, C).",
})

SUPPORT = [3, 7, 3, 0]  # classes of four support pictures: one class twice, so a name recurs
NAMES_OF_CLASSES = [5, 9, 14, 2, 11, 0, 7, 13, 4, 1, 8, 3]  # the episode's name index for each of the 12 classes


def _words_prompt(shots, query) -> list:
    """The ids of a prompt written from word lists."""
    tok = fewshot.fewshot_tokenizer()
    return tok.encode([w for shot in shots for w in shot] + query)


WORDS = (fewshot.IS, heldout.HELDOUT_WORD)  # the training template's link, then a new format's


def _prompt_mistakes(support, names, word) -> list[tuple[str, list]]:
    media, eoc = fewshot.MEDIA_TOKEN, fewshot.EOC_TOKEN
    name = lambda c: fewshot.NAMES[names[c]]  # noqa: E731
    mistakes = [
        (f"each support example must end with `<eoc>`: `<image> {word} NAME <eoc>`, so the model knows where one "
         "example stops (every training chunk ends with it).",
         _words_prompt([[media, word, name(c)] for c in support], [media, word])),
        (f"the query must end with `{word}`: the model writes the name right after `<image> {word}`, so the prompt "
         "stops there.", _words_prompt([[media, word, name(c), eoc] for c in support], [media])),
        (f"the query's `<image>` is missing: the prompt ends with `<image> {word}` for the query picture (its marker "
         "is what lets the text see it).", _words_prompt([[media, word, name(c), eoc] for c in support], [word])),
        ("the names are taken by the example's position (`names[i]`): `names` is indexed by class, so each example "
         "gets its class's name, `NAMES[names[c]]`, wherever it stands in the prompt.",
         _words_prompt([[media, word, fewshot.NAMES[names[i % len(names)]], eoc] for i, c in enumerate(support)],
                       [media, word])),  # (past the 12 names, a learner's own names[i] raises, and says so)
        ("the names come from the class index (`NAMES[c]`): use the episode's assignment, `NAMES[names[c]]`; every "
         "episode binds the names afresh.", _words_prompt([[media, word, fewshot.NAMES[c], eoc] for c in support], [media, word])),
        (f"the support examples are written as words (`red circle {word} NAME`): in this prompt each one is a "
         f"picture, `<image> {word} NAME <eoc>`, and the model has to see what it shows.",
         _words_prompt([[*fewshot.class_words(c), word, name(c), eoc] for c in support], [media, word])),
        ("the support examples are in reverse order: keep the order of `support_classes`, which is the order of "
         "the pictures given with the prompt.",
         _words_prompt([[media, word, name(c), eoc] for c in reversed(support)], [media, word])),
        (f"the name comes before the word (`<image> NAME {word}`): each example reads `<image> {word} NAME <eoc>`, "
         "the order of the training captions, so the query's prompt can stop right before its name.",
         _words_prompt([[media, name(c), word, eoc] for c in support], [media, word])),
        (f"the query ends with `<eoc>`: the prompt stops at `<image> {word}`, where the name is to come; `<eoc>` "
         "would say the example is over.", _words_prompt([[media, word, name(c), eoc] for c in support],
                                                          [media, word, eoc])),
        ("the query comes first: the support examples come first, in order, and the query last, so the name the "
         "model writes next is the query's.", _words_prompt([[media, word]] + [[media, word, name(c), eoc] for c in support], [])),
        (f"the word comes before the picture (`{word} <image> NAME`): each example reads `<image> {word} NAME <eoc>`, "
         "the picture's marker first, as in the training captions.",
         _words_prompt([[word, media, name(c), eoc] for c in support], [word, media])),
        ("the last support example is left out (a loop or a slice one short?): the prompt has one example for each "
         "class in `support_classes`.", _words_prompt([[media, word, name(c), eoc] for c in support[:-1]], [media, word])),
        ("the support examples are sorted: keep the order of `support_classes`, which is the order of the pictures "
         "given with the prompt.", _words_prompt([[media, word, name(c), eoc] for c in sorted(support)], [media, word])),
        (f"each example has its class's words as well (`<image> red circle {word} NAME`): the picture is all the "
         f"prompt shows of the class, `<image> {word} NAME <eoc>`, so the model has to see what it shows.",
         _words_prompt([[media, *fewshot.class_words(c), word, name(c), eoc] for c in support], [media, word])),
        (f"the `<eoc>` comes before the name (`<image> {word} <eoc> NAME`): it ends each example, after its name.",
         _words_prompt([[media, word, eoc, name(c)] for c in support], [media, word])),
    ]
    if all(c in names for c in support):  # a class no name index equals would raise in the learner's own code
        mistakes.append(("the names are looked up the other way (`names.index(c)`): `names[c]` is the index, in NAMES, "
                         "of class c's name in this episode, so the name is `NAMES[names[c]]`.",
                         _words_prompt([[media, word, fewshot.NAMES[names.index(c)], eoc] for c in support], [media, word])))
    for other in WORDS:
        if other != word:
            mistakes.append((f"the prompt is written with `{other}`, but word={word!r} was asked: put the word "
                             f"argument between each picture and its name, `<image> WORD NAME <eoc>`.",
                             _words_prompt([[media, other, name(c), eoc] for c in support], [media, other])))
            mistakes.append((f"the support examples are written with `{other}` and only the query with `{word}`: "
                             "every example and the query use the same word, the `word` argument.",
                             _words_prompt([[media, other, name(c), eoc] for c in support], [media, word])))
            mistakes.append((f"only the query is written with `{other}`: the query uses the same word as the examples, "
                             "the `word` argument.",
                             _words_prompt([[media, word, name(c), eoc] for c in support], [media, other])))
    return mistakes


def _first_difference(got: list, want: list, tok) -> str:
    """Where two prompts first differ, in words: the learner need not compare 130 tokens by eye."""
    got_words, want_words = tok.words(got), tok.words(want)
    at = next((i for i, (a, b) in enumerate(zip(got_words, want_words)) if a != b), min(len(got_words), len(want_words)))
    yours = repr(got_words[at]) if at < len(got_words) else "nothing (it ends there)"
    expected = repr(want_words[at]) if at < len(want_words) else "nothing (the prompt ends there)"
    return f"they first differ at word {at + 1}: yours has {yours}, expected {expected}"


def check_build_prompt(build_prompt) -> list:
    """Step "12.prompt": the k-shot prompt of a fixed episode and the 0-shot prompt, in the training template
    (`word="is"`) and in a new format (`word="a"`)."""
    tok = fewshot.fewshot_tokenizer()
    long_support = [c % 12 for c in range(5, 5 + 32)]  # 32 shots, as the curve below asks for
    earlier = []  # the prompts returned so far: one that starts with an earlier one's examples kept them
    for word in WORDS:
        for support in (SUPPORT, [], long_support):
            shown = support if len(support) <= 4 else f"<{len(support)} classes>"
            call = f"your build_prompt({shown}, names, tokenizer, word={word!r})"
            given, given_names = list(support), list(NAMES_OF_CLASSES)  # the learner's copies: a list changed in place would change the caller's
            got = run_learner(build_prompt, given, given_names, tok, word=word, what=call,
                              advice={"unexpected keyword argument 'word'": "give build_prompt a fourth argument, "
                                      "word=fewshot.IS: the word between each picture and its name."})
            if given != list(support):
                fail(f"{call} changed support_classes in place (a `.sort()`, `.pop()` or `.reverse()` on it): the "
                     "caller's list changes too, and the order of the shots is the prompt's; read it, never change it.")
            if given_names != NAMES_OF_CLASSES:
                fail(f"{call} changed names in place (a `.sort()` or an assignment into it): it is the episode's own "
                     "list, so every later prompt of that episode, and the answer it is scored against, would change "
                     "with it; read it, never change it.")
            if isinstance(got, torch.Tensor):
                fail("your build_prompt returned a tensor: return the list of token ids, `tokenizer.encode(words)` "
                     "(the evaluation below makes one tensor of all the prompts with `torch.tensor(prompts)`).")
            if isinstance(got, (list, tuple)) and got and all(isinstance(i, str) for i in got):
                fail("your build_prompt returned the words themselves: return their token ids, "
                     "`tokenizer.encode(words)`, a list of ints.")
            if isinstance(got, (list, tuple)) and len(got) == 1 and isinstance(got[0], (list, tuple)):
                fail("your build_prompt returned a batch of one prompt, `[ids]`: return the ids themselves, one flat "
                     "list (the evaluation below makes the batch of all the prompts itself).")
            if isinstance(got, (list, tuple)) and any(isinstance(i, (list, tuple)) for i in got):
                fail("your build_prompt returned a list of lists (one per shot?): return one flat list of token ids, "
                     "the shots one after the other, `tokenizer.encode(words)` of all the words.")
            if not isinstance(got, (list, tuple)) or not all(isinstance(i, int) for i in got):
                fail(f"your build_prompt returned {type(got).__name__}: return the list of token ids, "
                     "`tokenizer.encode(words)`.")
            want = tok.encode(heldout.template_words(support, NAMES_OF_CLASSES, word))
            earlier.append(got)
            if list(got) == want:
                continue
            for message, wrong in _prompt_mistakes(support, NAMES_OF_CLASSES, word):
                if list(got) == wrong:
                    fail(f"{call}: {message}")
            if not support and not got:
                fail(f"{call} gives an empty prompt: with 0 shots there are no examples, but the query is still there, "
                     f"`<image> {word}`, where the model writes its guess.")
            if len(support) > 4 and list(got) == want[: len(got)]:
                fail(f"{call} stops after {len(got)} of the {len(want)} tokens: a prompt has every shot it is given "
                     "(32 shots here, as the curve below uses), so no length limit.")
            again = run_learner(build_prompt, list(support), list(NAMES_OF_CLASSES), tok, word=word, what=call)
            kept = any(list(got) == list(before)[:-2] + want for before in earlier[:-1])  # an earlier call's examples, then this prompt
            if list(again) != list(got) or kept:
                fail(f"{call} gives another prompt when called again with the same arguments: something outlives "
                     "the call, such as a default list argument (`words=[]`) that keeps growing; make the list "
                     "inside the function, `words = []`.")
            fail(f"{call} gives {' '.join(tok.words(got))!r}, expected {' '.join(tok.words(want))!r}: "
                 f"{_first_difference(list(got), want, tok)}; no usual mistake matches.")
    want_k = fewshot.build_prompt(SUPPORT, NAMES_OF_CLASSES, tok)
    call = f"your build_prompt({SUPPORT}, names, tokenizer), with no word,"
    got = run_learner(build_prompt, list(SUPPORT), list(NAMES_OF_CLASSES), tok, what=call)
    if list(got) != want_k:  # the curve below calls it so: the training template
        default = next((w for w in WORDS if list(got) == tok.encode(heldout.template_words(SUPPORT, NAMES_OF_CLASSES, w))), None)
        fail(f"{call} gives {' '.join(tok.words(got))!r}" + (f", the prompt with word={default!r}" if default else "")
             + f": its default word is the training template's, `word=fewshot.IS` ({fewshot.IS!r}), since the curve "
             "below calls build_prompt without one.")
    passed(f"build_prompt is right: {' '.join(tok.words(want_k))!r} ({len(want_k)} tokens for {len(SUPPORT)} shots; "
           "0 shots is just '<image> is'), and the same with `a`.")
    return want_k


def example_logits(seed: int = 0):
    """Logits (3, 6, V) over the few-shot vocabulary and the 16 name ids, in an order of their own: neither sorted nor
    a run of consecutive ids, so a scorer that sorts them or takes a range of ids is found out."""
    tok = fewshot.fewshot_tokenizer()
    generator = torch.Generator().manual_seed(seed)
    logits = 3 * torch.randn(3, 6, len(tok), generator=generator)  # (b, n, V)
    order = torch.randperm(len(fewshot.NAMES), generator=generator).tolist()
    return logits, [tok.index[fewshot.NAMES[i]] for i in order]


def score_mistakes(logits: torch.Tensor, ids: list) -> list[Mistake]:
    last = logits[:, -1]  # (b, V)
    return [
        Mistake("first position", logits[:, 0].log_softmax(-1)[:, ids],
                "these are the scores at the first position: the next token after the prompt is predicted at the "
                "*last* position, `logits[:, -1]`."),
        Mistake("second to last", logits[:, -2].log_softmax(-1)[:, ids],
                "these are the scores one position too early: the prediction after the prompt is `logits[:, -1]`."),
        Mistake("raw logits", last[:, ids],
                "these are raw logits, not log-probabilities: apply `log_softmax(dim=-1)` over the vocabulary first."),
        Mistake("probabilities", last.softmax(-1)[:, ids],
                "these are probabilities: the scorer returns *log*-probabilities, `log_softmax(dim=-1)`."),
        Mistake("over positions", logits.log_softmax(dim=1)[:, -1][:, ids],
                "the log_softmax runs over the positions (dim=1): normalise over the vocabulary, `dim=-1`."),
        Mistake("renormalised", last[:, ids].log_softmax(-1),
                "the scores are renormalised over the candidates only: take log_softmax over the whole vocabulary, "
                "then the candidates' columns (the ranking is the same, but these are not the model's probabilities)."),
        Mistake("first C entries", last.log_softmax(-1)[:, : len(ids)],
                "these are the first C vocabulary entries, not the candidates: index the columns with "
                "`candidate_ids`."),
        Mistake("negated", -last.log_softmax(-1)[:, ids],
                "these are negative log-probabilities (a loss's sign): the best candidate would get the lowest "
                "score; return `log_softmax` itself, so that `argmax` picks the likeliest."),
        Mistake("over the batch", last.log_softmax(dim=0)[:, ids],
                "the log_softmax runs over the batch (dim=0), across prompts: normalise each prompt's row over the "
                "vocabulary, `dim=-1`."),
        Mistake("averaged over positions", logits.log_softmax(-1).mean(dim=1)[:, ids],
                "the scores are averaged over the prompt's positions: only the last position predicts the token "
                "after the prompt, `logits[:, -1]`."),
        Mistake("logits averaged over positions", logits.mean(dim=1).log_softmax(-1)[:, ids],
                "the logits are averaged over the prompt's positions: only the last position predicts the token "
                "after the prompt, `logits[:, -1]`."),
    ]


def check_score_names(score_names) -> torch.Tensor:
    """Step "12.score": log p(candidate | prompt) at the last position, on random logits."""
    logits, ids = example_logits()
    got = run_untouched(score_names, logits, list(ids), what="your score_names(logits, candidate_ids)",
                        names=("logits", "candidate_ids"))
    if isinstance(got, torch.Tensor) and not got.is_floating_point():
        fail(f"your score_names returned integers {tuple(got.shape)}, indices rather than scores: return every "
             "candidate's log-probability, (b, C); the evaluation takes the argmax itself.")
    if isinstance(got, torch.Tensor) and got.is_floating_point() and got.dtype != logits.dtype:
        fail(f"your score_names returned {got.dtype} scores from {logits.dtype} logits: keep the logits' dtype "
             "(no `.half()` or `.double()`), so the scores are the model's to the last digit.")
    want = fewshot.score_candidates(logits[:, -1], ids)  # (b, C)
    compare(got, want, what="your score_names", mistakes=score_mistakes(logits, ids),
            shape_advice="keep the batch axis, take the last position (`logits[:, -1]`, (b, V)), then the candidates' "
                         "columns (`[:, candidate_ids]`, (b, C)).")
    passed(f"score_names is right: (batch, candidates) = {tuple(want.shape)} log-probabilities, each row's best "
           f"candidate {want.argmax(-1).tolist()}.")
    return want


def _nearest_mistakes(support: torch.Tensor, query: torch.Tensor) -> dict[str, int]:
    """The usual wrong choices of support picture, each by what it computes."""
    pooled_support, pooled_query = support.mean(dim=1), query.mean(dim=0)  # (k, d), (d,)
    cosine = F.normalize(pooled_support, dim=-1) @ F.normalize(pooled_query, dim=-1)  # (k,)
    flat = F.normalize(support.flatten(1), dim=-1) @ F.normalize(query.flatten(), dim=-1)  # (k,)
    maxed = F.normalize(support.amax(dim=1), dim=-1) @ F.normalize(query.amax(dim=0), dim=-1)  # (k,)
    over_features = F.normalize(support.mean(dim=-1), dim=-1) @ F.normalize(query.mean(dim=-1), dim=-1)  # (k,)
    per_cell = (F.normalize(support, dim=-1) * F.normalize(query, dim=-1)).sum(dim=-1).mean(dim=1)  # (k,)
    across_pictures = F.normalize(pooled_support, dim=0) @ F.normalize(pooled_query, dim=-1)  # (k,)
    cosine_dim0 = F.cosine_similarity(pooled_support, pooled_query[None], dim=0)  # (d,): one per feature
    return {
        "features averaged": int(over_features.argmax()),
        "per-cell cosines": int(per_cell.argmax()),
        "normalised across pictures": int(across_pictures.argmax()),
        "cosine over dim 0": int(cosine_dim0.argmax()),
        "not normalised": int((pooled_support @ pooled_query).argmax()),
        "farthest": int(cosine.argmin()),
        "flattened": int(flat.argmax()),
        "max-pooled": int(maxed.argmax()),
        "euclidean": int((pooled_support - pooled_query).norm(dim=-1).argmin()),
    }


_NEAREST_MESSAGES = {
    "features averaged": "the features are averaged (`mean(dim=-1)`), not the grid cells: average each picture "
                         "over its cells, `support.mean(dim=1)` (k, d) and `query.mean(dim=0)` (d,), keeping the features.",
    "per-cell cosines": "the cosines are taken cell by cell and then averaged: average the features over the cells "
                        "first, then one cosine per support picture, so where the object sits does not count.",
    "normalised across pictures": "the support features are normalised across the pictures (`dim=0`): normalise "
                                  "each picture's vector over its features, `F.normalize(..., dim=-1)`.",
    "cosine over dim 0": "the cosine runs over the support pictures (`dim=0`), so it gives one number per feature and "
                         "the index is a feature's: take it over the features, `dim=-1`, one number per support picture.",
    "not normalised": "the features are not normalised: a dot product favours the support picture with the largest "
                      "features, not the most similar one; normalise both with `F.normalize(..., dim=-1)` first, so "
                      "the product is a cosine.",
    "farthest": "this is the *least* similar support picture: take `argmax` of the cosines, not `argmin`.",
    "flattened": "the grid cells are flattened into one long vector: that compares cell by cell, so a shape drawn "
                 "one cell over looks different; average over the cells first, `support.mean(dim=1)`.",
    "max-pooled": "the grid cells are max-pooled: the baseline averages them, `support.mean(dim=1)` and "
                  "`query.mean(dim=0)`.",
    "euclidean": "this is the nearest by Euclidean distance of unnormalised features, where their sizes count: "
                 "normalise first (on unit vectors the nearest by distance is the largest cosine).",
}


def nearest_examples(num: int = 40, *, k: int = 6, g: int = 4, d: int = 8, seed: int = 0):
    """`num` random (support (k, g, d), query (g, d)) pairs whose pictures' features differ much in size, so every
    usual mistake chooses otherwise on some of them."""
    gen = torch.Generator().manual_seed(seed)
    examples = []
    for _ in range(num):
        scale = torch.exp(2 * torch.randn(k, 1, 1, generator=gen))  # (k, 1, 1): sizes from about 0.02 to 50
        support = scale * torch.randn(k, g, d, generator=gen) + torch.randn(k, 1, d, generator=gen)  # (k, g, d)
        query = torch.randn(g, d, generator=gen) + torch.randn(1, d, generator=gen)  # (g, d)
        examples.append((support, query))
    return examples


def check_nearest_support(nearest_support) -> None:
    """Step "12.nearest": the learner's `nearest_support(support, query) -> int` on 40 random episodes."""
    examples = nearest_examples()
    what = "your nearest_support(support, query)"
    chosen = []
    for support, query in examples:
        got = run_untouched(nearest_support, support, query, what=what, names=("support", "query"),
                            fix="`F.normalize` and `.mean` return new tensors.")
        if (isinstance(got, torch.Tensor) and got.numel() == 1 and not got.is_floating_point()) or isinstance(got, np.integer):
            got = int(got)  # a single integer, as argmax gives it, is an index whatever its type
        if isinstance(got, bool) or not isinstance(got, int):
            fail(f"{what} returned {type(got).__name__} {got!r}: return the index of the most similar support picture, "
                 "one Python int in range(k), `int(cosines.argmax())`.")
        chosen.append(got)
    right = [heldout.nearest_support(support, query) for support, query in examples]
    if chosen == right:
        passed(f"nearest_support is right on {len(examples)} random episodes: the cosine of grid-averaged features, "
               "the most similar support picture.")
        return
    wrong = sum(a != b for a, b in zip(chosen, right))
    if chosen == [r + 1 for r in right]:
        fail(f"{what} returns the right picture's index plus one: `argmax` already counts from 0, as the support "
             "pictures are indexed, so return `int(cosines.argmax())` as it is.")
    if chosen == [len(support) - 1 - r for r, (support, _) in zip(right, examples)]:
        fail(f"{what} counts the support pictures from the end (reversed, or flipped): index i is support[i], so "
             "compare them in the order given and return the index as `argmax` gives it.")
    mistakes = [_nearest_mistakes(support, query) for support, query in examples]
    for name, message in _NEAREST_MESSAGES.items():
        if chosen == [m[name] for m in mistakes]:
            fail(f"{what} chose another picture on {wrong} of {len(examples)} episodes: {message}")
    outside = [(got, len(support)) for got, (support, _) in zip(chosen, examples) if not 0 <= got < len(support)]
    if outside:
        got, k = outside[0]
        query_itself = all(c == len(support) for c, (support, _) in zip(chosen, examples))  # the query always wins
        fail(f"{what} returned {got}, outside range({k}), the {k} support pictures"
             f"{': index k is the query itself, which was among the candidates' if query_itself else ''}. Compare "
             "the query with each support picture, one number per picture, and return the index of one of them "
             "(and check the signature's order: `nearest_support(support, query)`).")
    fail(f"{what} chose another picture on {wrong} of {len(examples)} episodes, and no usual mistake matches: average "
         "each picture over its grid cells, normalise, and take the largest cosine (`hint(\"12.nearest\")`).")

register_nudges({  # first hints for the steps whose full hint is the answer
    "12.nearest": "Nearest neighbour on the frozen features: one vector per picture, the mean over its grid cells; "
    "compare the query with every support picture by cosine similarity, and answer with the index of the "
    "most similar.",
    "12.prompt": "A prompt is the support examples in order, each an image marker, its words, the episode's name for "
    "its class and the end-of-chunk token; then the query, which stops where the name would come. Mind "
    "which name: the episode binds names to classes afresh.",
    "12.score": "The answer is the next token after the prompt, so read the prediction at the prompt's last position. "
    "Score each candidate by its log-probability over the whole vocabulary.",
})


record_verdicts(globals())  # failed_checks(lesson12) sees every check's last verdict
