"""Lesson 12's checks: the stub fails saying it is not written, the solution passes, and every usual mistake the
checks claim to recognise is fed to them and named in the verdict."""
import numpy as np
import pytest
import torch

from flamingo_lite.teaching.exercises import ExerciseFailed, hint, lesson12
from flamingo_lite.tiny import fewshot


def fails(check, fn, match):
    with pytest.raises(ExerciseFailed, match=match):
        check(fn)


def stub(*args, **kwargs):
    raise NotImplementedError


def prompt_solution(support_classes, names, tokenizer, word="is"):
    words = []
    for c in support_classes:
        words += ["<image>", word, fewshot.NAMES[names[c]], "<eoc>"]
    return tokenizer.encode(words + ["<image>", word])


def wrong_prompt(shot, query, order=lambda s: s):
    def build(support_classes, names, tokenizer, word="is"):  # the mistakes below write `is` whatever the word
        words = [w for c in order(list(support_classes)) for w in shot(c, names)]
        return tokenizer.encode(words + query)
    return build


NAME = lambda c, names: fewshot.NAMES[names[c]]  # noqa: E731


def test_the_prompt_stub_fails_saying_it_is_not_written():
    fails(lesson12.check_build_prompt, stub, match="not written yet")


def test_the_prompt_solution_passes(capsys):
    ids = lesson12.check_build_prompt(prompt_solution)
    assert ids == fewshot.build_prompt(lesson12.SUPPORT, lesson12.NAMES_OF_CLASSES, fewshot.fewshot_tokenizer())
    assert capsys.readouterr().out.startswith("OK")


@pytest.mark.parametrize("wrong, match", [
    (wrong_prompt(lambda c, n: ["<image>", "is", NAME(c, n)], ["<image>", "is"]), "must end with `<eoc>`"),
    (wrong_prompt(lambda c, n: ["<image>", "is", NAME(c, n), "<eoc>"], ["<image>"]), "must end with `is`"),
    (wrong_prompt(lambda c, n: ["<image>", "is", NAME(c, n), "<eoc>"], ["is"]), "query's `<image>` is missing"),
    (wrong_prompt(lambda c, n: ["<image>", "is", fewshot.NAMES[c], "<eoc>"], ["<image>", "is"]), "from the class index"),
    (wrong_prompt(lambda c, n: [*fewshot.class_words(c), "is", NAME(c, n), "<eoc>"], ["<image>", "is"]), "written as words"),
    (wrong_prompt(lambda c, n: ["<image>", "is", NAME(c, n), "<eoc>"], ["<image>", "is"], order=lambda s: s[::-1]), "reverse order"),
    (wrong_prompt(lambda c, n: ["<image>", NAME(c, n), "is", "<eoc>"], ["<image>", "is"]), "name comes before the word"),
    (lambda s, n, t, word="is": t.encode([w for i, c in enumerate(s) for w in ["<image>", "is", fewshot.NAMES[n[i]], "<eoc>"]]
                                          + ["<image>", "is"]), "taken by the example's position"),
    (wrong_prompt(lambda c, n: ["<image>", "is", NAME(c, n), "<eoc>"], ["<image>", "is", "<eoc>"]), "query ends with `<eoc>`"),
    (wrong_prompt(lambda c, n: ["is", "<image>", NAME(c, n), "<eoc>"], ["is", "<image>"]), "word comes before the picture"),
    (wrong_prompt(lambda c, n: ["<image>", "is", NAME(c, n), "<eoc>"], ["<image>", "is"], order=lambda s: s[:-1]),
     "last support example is left out"),
    (wrong_prompt(lambda c, n: ["<image>", "is", NAME(c, n), "<eoc>"], ["<image>", "is"], order=sorted), "support examples are sorted"),
    (wrong_prompt(lambda c, n: ["<image>", *fewshot.class_words(c), "is", NAME(c, n), "<eoc>"], ["<image>", "is"]),
     "each example has its class's words as well"),
    (wrong_prompt(lambda c, n: ["<image>", "is", "<eoc>", NAME(c, n)], ["<image>", "is"]), "the `<eoc>` comes before the name"),
    (wrong_prompt(lambda c, n: ["<image>", "is", fewshot.NAMES[n.index(c)], "<eoc>"], ["<image>", "is"]),
     r"names are looked up the other way \(`names.index\(c\)`\)"),
])
def test_each_prompt_mistake_is_named(wrong, match):
    fails(lesson12.check_build_prompt, wrong, match=match)


def test_a_prompt_with_the_query_first_is_named():
    def query_first(support_classes, names, tokenizer, word="is"):
        shots = [w for c in support_classes for w in ["<image>", word, NAME(c, names), "<eoc>"]]
        return tokenizer.encode(["<image>", word] + shots)

    fails(lesson12.check_build_prompt, query_first, match="the query comes first")


def test_a_prompt_that_is_not_ids_or_unknown_is_named():
    fails(lesson12.check_build_prompt, lambda s, n, t, word="is": " ".join(map(str, prompt_solution(s, n, t, word))),
          match="list of token ids")
    fails(lesson12.check_build_prompt, lambda s, n, t, word="is": prompt_solution(s, n, t, word)[:-1] + [0],
          match="no usual mistake matches")
    fails(lesson12.check_build_prompt, lambda s, n, t, word="is": torch.tensor(prompt_solution(s, n, t, word)),
          match="returned a tensor")


def test_a_prompt_that_ignores_the_word_is_named():
    """The new format: a builder that writes `is` whatever word it is given, or takes no word, is named."""
    fails(lesson12.check_build_prompt, lambda s, n, t, word="is": prompt_solution(s, n, t),
          match=r"word='a'\): the prompt is written with `is`, but word='a' was asked")
    fails(lesson12.check_build_prompt, lambda s, n, t: prompt_solution(s, n, t),
          match=r"unexpected keyword argument 'word'; give build_prompt a fourth argument, word=fewshot.IS")
    fails(lesson12.check_build_prompt, lambda s, n, t, word="is": prompt_solution(s, n, t, "a"),
          match=r"word='is'\): the prompt is written with `a`, but word='is' was asked")


def test_a_prompt_that_uses_the_word_for_one_part_only_is_named():
    def query_only(support_classes, names, tokenizer, word="is"):
        shots = [w for c in support_classes for w in ["<image>", "is", NAME(c, names), "<eoc>"]]
        return tokenizer.encode(shots + ["<image>", word])

    def support_only(support_classes, names, tokenizer, word="is"):
        shots = [w for c in support_classes for w in ["<image>", word, NAME(c, names), "<eoc>"]]
        return tokenizer.encode(shots + ["<image>", "is"])

    fails(lesson12.check_build_prompt, query_only, match=r"support examples are written with `is` and only the query with `a`")
    fails(lesson12.check_build_prompt, support_only, match=r"only the query is written with `is`")


def test_a_prompt_builder_whose_default_list_grows_is_named():
    def growing(support_classes, names, tokenizer, word="is", words=[]):  # noqa: B006 - the mistake under test
        for c in support_classes:
            words += ["<image>", word, NAME(c, names), "<eoc>"]
        return tokenizer.encode(words + ["<image>", word])

    fails(lesson12.check_build_prompt, growing, match=r"gives another prompt when called again with the same arguments: "
          r".*a default list argument \(`words=\[\]`\) that keeps growing")


def test_any_other_wrong_prompt_is_shown_with_its_first_wrong_word():
    def doubled(support_classes, names, tokenizer, word="is"):
        return prompt_solution(support_classes, names, tokenizer, word) + [tokenizer.index[word]]  # `<image> is is`

    fails(lesson12.check_build_prompt, doubled, match=r"they first differ at word 19: yours has 'is', expected nothing "
          r"\(the prompt ends there\); no usual mistake matches")

    def eoc_first(support_classes, names, tokenizer, word="is"):  # wrong at 0 shots only, and not a growing list
        return prompt_solution(support_classes, names, tokenizer, word) if support_classes else tokenizer.encode(["<eoc>", "<image>", word])

    fails(lesson12.check_build_prompt, eoc_first, match=r"build_prompt\(\[\], .* first differ at word 1: yours has '<eoc>', "
          r"expected '<image>'; no usual mistake matches")


def test_a_prompt_builder_with_another_default_word_is_named():
    """Right for every word it is given, but the curve calls it with none: the default must be the training one."""
    def default_a(support_classes, names, tokenizer, word="a"):
        return prompt_solution(support_classes, names, tokenizer, word)

    fails(lesson12.check_build_prompt, default_a, match=r"with no word, gives .*the prompt with word='a': its default "
          r"word is the training template's, `word=fewshot.IS`")


def test_evaluate_format_writes_its_prompts_with_the_builder_it_is_given():
    from flamingo_lite.tiny import heldout
    from flamingo_lite.tiny.language_model import LMConfig, TinyLM

    tok = fewshot.fewshot_tokenizer()
    lm = TinyLM(LMConfig(vocab_size=len(tok), max_len=40))
    episodes = fewshot.make_heldout_episodes(4, seed=0, pool_size=8)
    seen = []

    def builder(classes, names, tokenizer, word="is"):
        seen.append(word)
        return prompt_solution(classes, names, tokenizer, word)

    mine = heldout.evaluate_format(lm, episodes, 2, tok, word="a", lm_only=True, build=builder)
    theirs = heldout.evaluate_format(lm, episodes, 2, tok, word="a", lm_only=True)
    assert seen == ["a"] * 4 and mine == theirs


def test_a_score_of_the_wrong_shape_says_which_axes():
    fails(lesson12.check_score_names, lambda lg, ids: lg[:, -1].log_softmax(-1), match=r"the last position .* the candidates' columns")
    fails(lesson12.check_score_names, lambda lg, ids: lg[0, -1].log_softmax(-1)[ids], match="keep the batch axis")


def test_the_prompt_mistakes_differ_from_the_answer_and_each_other():
    tok = fewshot.fewshot_tokenizer()
    for word in lesson12.WORDS:
        right = prompt_solution(lesson12.SUPPORT, lesson12.NAMES_OF_CLASSES, tok, word)
        wrongs = [w for _, w in lesson12._prompt_mistakes(lesson12.SUPPORT, lesson12.NAMES_OF_CLASSES, word)]
        assert all(w != right for w in wrongs) and len({tuple(w) for w in wrongs}) == len(wrongs) == 19


def score_solution(logits, candidate_ids):
    return logits[:, -1].log_softmax(dim=-1)[:, candidate_ids]


def test_a_scorer_that_changes_the_logits_in_place_is_named():
    def in_place(logits, candidate_ids):
        return logits.sub_(logits.logsumexp(dim=-1, keepdim=True))[:, -1, candidate_ids]  # log_softmax, in place

    fails(lesson12.check_score_names, in_place, match="changed its input logits in place")


def test_the_score_stub_fails_and_the_solution_passes(capsys):
    fails(lesson12.check_score_names, stub, match="not written yet")
    got = lesson12.check_score_names(score_solution)
    assert got.shape == (3, 16) and "OK" in capsys.readouterr().out


@pytest.mark.parametrize("wrong, match", [
    (lambda lg, ids: lg[:, 0].log_softmax(-1)[:, ids], "first position"),
    (lambda lg, ids: lg[:, -2].log_softmax(-1)[:, ids], "one position too early"),
    (lambda lg, ids: lg[:, -1][:, ids], "raw logits"),
    (lambda lg, ids: lg[:, -1].softmax(-1)[:, ids], "these are probabilities"),
    (lambda lg, ids: lg.log_softmax(1)[:, -1][:, ids], "over the positions"),
    (lambda lg, ids: lg[:, -1][:, ids].log_softmax(-1), "renormalised over the candidates"),
    (lambda lg, ids: lg[:, -1].log_softmax(-1)[:, : len(ids)], "first C vocabulary entries"),
    (lambda lg, ids: -lg[:, -1].log_softmax(-1)[:, ids], "negative log-probabilities"),
    (lambda lg, ids: lg[:, -1].log_softmax(0)[:, ids], "over the batch \\(dim=0\\)"),
    (lambda lg, ids: lg.log_softmax(-1).mean(1)[:, ids], "scores are averaged over the prompt's positions"),
    (lambda lg, ids: lg.mean(1).log_softmax(-1)[:, ids], "logits are averaged over the prompt's positions"),
])
def test_each_score_mistake_is_named(wrong, match):
    fails(lesson12.check_score_names, wrong, match=match)


def test_the_score_mistakes_differ_from_the_answer_and_each_other():
    logits, ids = lesson12.example_logits()
    right = score_solution(logits, ids)
    outs = [m.output for m in lesson12.score_mistakes(logits, ids)]
    assert all(not torch.allclose(o, right, atol=1e-3) for o in outs)
    assert all(not torch.allclose(a, b, atol=1e-3) for i, a in enumerate(outs) for b in outs[i + 1:])


def test_the_hints_exist(capsys):
    for key in ("12.prompt", "12.score", "12.nearest"):
        hint(key)
        assert key in capsys.readouterr().out


def nearest_solution(support, query):
    pooled_support = torch.nn.functional.normalize(support.mean(dim=1), dim=-1)  # (k, d)
    pooled_query = torch.nn.functional.normalize(query.mean(dim=0), dim=-1)  # (d,)
    return int((pooled_support @ pooled_query).argmax())


def nearest_wrong(mistake):
    normalize = torch.nn.functional.normalize

    def nearest(support, query):
        if mistake == "not normalised":
            return int((support.mean(dim=1) @ query.mean(dim=0)).argmax())
        if mistake == "farthest":
            return int((normalize(support.mean(dim=1), dim=-1) @ normalize(query.mean(dim=0), dim=-1)).argmin())
        if mistake == "flattened":
            return int((normalize(support.reshape(support.shape[0], -1), dim=-1) @ normalize(query.reshape(-1), dim=-1)).argmax())
        if mistake == "max-pooled":
            return int((normalize(support.max(dim=1).values, dim=-1) @ normalize(query.max(dim=0).values, dim=-1)).argmax())
        if mistake == "euclidean":
            return int(torch.cdist(support.mean(dim=1)[None], query.mean(dim=0)[None, None])[0, :, 0].argmin())
        if mistake == "tensor of cosines":
            return normalize(support.mean(dim=1), dim=-1) @ normalize(query.mean(dim=0), dim=-1)
        if mistake == "in place":
            support /= support.norm(dim=-1, keepdim=True)
            return nearest_solution(support, query)
        if mistake == "first":
            return 0
        if mistake == "plus one":
            return nearest_solution(support, query) + 1
        if mistake == "features averaged":
            return int((normalize(support.mean(dim=-1), dim=-1) @ normalize(query.mean(dim=-1), dim=-1)).argmax())
        if mistake == "per-cell cosines":
            cells = torch.einsum("kgd,gd->kg", normalize(support, dim=-1), normalize(query, dim=-1))  # (k, g)
            return int(cells.mean(dim=1).argmax())
        if mistake == "normalised across pictures":
            return int((normalize(support.mean(dim=1), dim=0) @ normalize(query.mean(dim=0), dim=0)).argmax())
        if mistake == "cosine over dim 0":
            return int(torch.nn.functional.cosine_similarity(support.mean(dim=1), query.mean(dim=0)[None], dim=0).argmax())
        raise AssertionError(mistake)

    return nearest


def test_12_nearest_support_passes_the_solution_and_the_package(capsys):
    from flamingo_lite.tiny import heldout

    lesson12.check_nearest_support(nearest_solution)
    lesson12.check_nearest_support(heldout.nearest_support)
    lesson12.check_nearest_support(lambda s, q: torch.tensor(nearest_solution(s, q)))  # a 0-d integer tensor is an index
    lesson12.check_nearest_support(lambda s, q: np.int64(nearest_solution(s, q)))  # and so is NumPy's integer
    assert capsys.readouterr().out.startswith("OK: nearest_support is right on 40 random episodes")
    fails(lesson12.check_nearest_support, stub, match="not written yet")


@pytest.mark.parametrize("mistake, match", [
    ("not normalised", "features are not normalised"), ("farthest", "least\\* similar"),
    ("flattened", "flattened into one long vector"), ("max-pooled", "max-pooled"),
    ("euclidean", "Euclidean distance of unnormalised features"),
    ("tensor of cosines", "returned Tensor.*one Python int"), ("in place", "changed its input support in place"),
    ("first", "no usual mistake matches"), ("plus one", "index plus one: `argmax` already counts from 0"),
    ("features averaged", r"features are averaged \(`mean\(dim=-1\)`\), not the grid cells"),
    ("per-cell cosines", "cosines are taken cell by cell and then averaged"),
    ("normalised across pictures", r"normalised across the pictures \(`dim=0`\)"),
    ("cosine over dim 0", r"cosine runs over the support pictures \(`dim=0`\), so it gives one number per feature"),
])
def test_12_nearest_support_mistakes_are_named(mistake, match):
    fails(lesson12.check_nearest_support, nearest_wrong(mistake), match=match)


def test_12_nearest_support_rejects_bad_shapes_by_name():
    from flamingo_lite.tiny import heldout

    with pytest.raises(ValueError, match=r"support must be \(k, g, d\).*got support \(3, 4\) and query \(4, 8\)"):
        heldout.nearest_support(torch.zeros(3, 4), torch.zeros(4, 8))
    with pytest.raises(ValueError, match=r"got support \(3, 4, 8\) and query \(5, 8\)"):
        heldout.nearest_support(torch.zeros(3, 4, 8), torch.zeros(5, 8))
    with pytest.raises(TypeError, match="support and query must be tensors"):
        heldout.nearest_support([[0.0]], torch.zeros(4, 8))


def test_a_prompt_that_sorts_the_support_in_place_stops_at_a_length_or_is_not_flat_is_named():
    def sorts(support_classes, names, tokenizer, word="is"):
        support_classes.sort()
        return prompt_solution(support_classes, names, tokenizer, word)

    fails(lesson12.check_build_prompt, sorts, match=r"changed support_classes in place \(a `\.sort\(\)`")
    fails(lesson12.check_build_prompt, lambda s, n, t, word="is": prompt_solution(s, n, t, word)[:64],
          match=r"<32 classes>.* stops after 64 of the 130 tokens: a prompt has every shot it is given")
    fails(lesson12.check_build_prompt, lambda s, n, t, word="is": t.words(prompt_solution(s, n, t, word)),
          match=r"returned the words themselves: return their token ids")
    fails(lesson12.check_build_prompt, lambda s, n, t, word="is": [prompt_solution([c], n, t, word) for c in s] or [[]],
          match=r"returned a list of lists \(one per shot\?\)")


def test_a_nearest_support_that_counts_the_query_among_the_candidates_is_named():
    def with_query(support, query):
        pool = torch.cat([support, query[None]])  # (k + 1, g, d): the query among the candidates
        pooled = torch.nn.functional.normalize(pool.mean(dim=1), dim=-1)  # (k + 1, d)
        return int((pooled @ torch.nn.functional.normalize(query.mean(dim=0), dim=-1)).argmax())

    with pytest.raises(ExerciseFailed, match=r"returned 6, outside range\(6\), the 6 support pictures: index k is the "
                                             r"query itself"):
        lesson12.check_nearest_support(with_query)


def test_the_nearest_mistakes_differ_from_the_answer_and_each_other():
    """Each mistake chooses its own pictures on the 40 episodes, so each verdict names one mistake only."""
    examples = lesson12.nearest_examples()
    from flamingo_lite.tiny import heldout

    right = [heldout.nearest_support(s, q) for s, q in examples]
    choices = {name: [lesson12._nearest_mistakes(s, q)[name] for s, q in examples] for name in lesson12._NEAREST_MESSAGES}
    assert all(c != right for c in choices.values())
    assert len({tuple(c) for c in choices.values()}) == len(choices) == 9


def test_a_cosine_index_past_the_support_is_not_blamed_on_the_query():
    """Only an index k on every episode is the query among the candidates; one past the end now and then is not."""
    def sometimes_past(support, query):
        right = nearest_solution(support, query)
        return len(support) if right == 0 else right

    with pytest.raises(ExerciseFailed, match=r"outside range\(6\), the 6 support pictures\. Compare the query with each") as caught:
        lesson12.check_nearest_support(sometimes_past)
    assert "query itself" not in str(caught.value)


def test_a_prompt_builder_that_changes_names_in_place_is_named():
    def sorts_names(support_classes, names, tokenizer, word="is"):
        ids = prompt_solution(support_classes, names, tokenizer, word)
        names.sort()  # after use: the prompt is right, the episode's names are not
        return ids

    fails(lesson12.check_build_prompt, sorts_names, match=r"changed names in place \(a `\.sort\(\)` or an assignment")


def test_a_batch_of_one_prompt_and_an_empty_zero_shot_prompt_are_named():
    fails(lesson12.check_build_prompt, lambda s, n, t, word="is": [prompt_solution(s, n, t, word)],
          match=r"returned a batch of one prompt, `\[ids\]`: return the ids themselves")
    fails(lesson12.check_build_prompt, lambda s, n, t, word="is": prompt_solution(s, n, t, word) if s else [],
          match=r"gives an empty prompt: with 0 shots there are no examples, but the query is still there, `<image> is`")


def test_a_scorer_returning_indices_or_relying_on_the_order_of_the_ids_is_named():
    fails(lesson12.check_score_names, lambda lg, ids: score_solution(lg, ids).argmax(-1),
          match=r"returned integers \(3,\), indices rather than scores")
    fails(lesson12.check_score_names, lambda lg, ids: score_solution(lg, sorted(ids)), match="no usual mistake matches")
    fails(lesson12.check_score_names, lambda lg, ids: lg[:, -1].log_softmax(-1)[:, min(ids): min(ids) + len(ids)],
          match="no usual mistake matches")
    _, ids = lesson12.example_logits()
    assert ids != sorted(ids)  # the check's candidates come in an order of their own


def test_a_scorer_in_another_dtype_and_a_nearest_counted_from_the_end_are_named():
    fails(lesson12.check_score_names, lambda lg, ids: score_solution(lg, ids).double(),
          match=r"returned torch.float64 scores from torch.float32 logits: keep the logits' dtype")
    fails(lesson12.check_nearest_support, lambda s, q: nearest_solution(s.flip(0), q),
          match=r"counts the support pictures from the end \(reversed, or flipped\)")

    def swapped(query, support):  # the signature's arguments the wrong way round
        pooled_support = torch.nn.functional.normalize(support.mean(dim=1), dim=-1)
        pooled_query = torch.nn.functional.normalize(query.mean(dim=0), dim=-1)
        return int((pooled_support @ pooled_query).argmax())

    fails(lesson12.check_nearest_support, swapped, match=r"check the signature's order: `nearest_support\(support, query\)`")
