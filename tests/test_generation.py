"""Generation with cached media and a KV cache: the same logits as recomputing everything, greedy and beam search."""
import pytest
import torch

from flamingo_lite.tiny.data import Tokenizer
from flamingo_lite.tiny.generation import CachedDecoder, UncachedDecoder, generate
from flamingo_lite.tiny.model import Flamingo, FlamingoConfig

TOK = Tokenizer()
EOC = TOK.eoc_id
IMAGE = TOK.media_id


def model_and_prompt(immediate=True, pictures=2, seed=0):
    torch.manual_seed(seed)
    model = Flamingo(FlamingoConfig(max_len=40, only_attend_immediate_media=immediate, cross_attn_every=1))
    with torch.no_grad():
        for block in model.xattn.values():  # open the gates, so the pictures change the logits
            block.attn_gate.fill_(0.7)
            block.ff_gate.fill_(0.3)
    words = [IMAGE, 3, 4, 5, EOC] * pictures + [3, 4]
    tokens = torch.tensor([words])  # (1, n)
    images = torch.rand(1, max(pictures, 1), 3, 16, 16)  # (1, t, 3, H, W)
    return model.eval(), tokens, images


@pytest.mark.parametrize("immediate,pictures", [(True, 2), (False, 3), (True, 0)])
def test_cached_and_uncached_logits_agree_at_every_step(immediate, pictures):
    model, tokens, images = model_and_prompt(immediate, pictures)
    with torch.no_grad():
        cached, plain = CachedDecoder(model, images), UncachedDecoder(model, images)
        a, b = cached.prefill(tokens), plain.prefill(tokens)
        assert torch.allclose(a, b, atol=1e-5)
        for step in range(8):
            new = torch.tensor([[3 + step % 5]])  # (1, 1)
            a, b = cached.step(new), plain.step(new)
            assert (a - b).abs().max() <= 1e-5, f"step {step}"
        assert cached.length == tokens.shape[1] + 8


def test_pictures_change_the_generated_logits():
    model, tokens, images = model_and_prompt()
    with torch.no_grad():
        one = CachedDecoder(model, images).prefill(tokens)
        other = CachedDecoder(model, torch.rand_like(images)).prefill(tokens)
    assert not torch.allclose(one, other)


@pytest.mark.parametrize("num_beams", [1, 3])
def test_generate_writes_the_same_with_and_without_cache(num_beams):
    model, tokens, images = model_and_prompt()
    cached = generate(model, tokens, images, max_new_tokens=10, eoc_id=None, num_beams=num_beams)
    plain = generate(model, tokens, images, max_new_tokens=10, eoc_id=None, num_beams=num_beams, use_cache=False)
    assert torch.equal(cached, plain)
    assert cached.shape == (1, tokens.shape[1] + 10) and torch.equal(cached[:, : tokens.shape[1]], tokens)
    assert not bool((cached[0, tokens.shape[1] :] == IMAGE).any())  # never an <image> without a picture


def test_greedy_is_the_argmax_at_each_step():
    model, tokens, images = model_and_prompt()
    out = generate(model, tokens, images, max_new_tokens=4, eoc_id=None)
    with torch.no_grad():
        for j in range(4):
            logits = model(out[:, : tokens.shape[1] + j], images)[0, -1]
            logits[IMAGE] = float("-inf")
            assert int(logits.argmax()) == int(out[0, tokens.shape[1] + j])


@pytest.mark.parametrize("num_beams", [1, 2])
def test_generation_stops_at_eoc(num_beams):
    model, tokens, images = model_and_prompt()
    with torch.no_grad():  # a head that always prefers <eoc>: every beam ends at once
        model.lm.ln_f.weight.zero_()
        model.lm.ln_f.bias.fill_(1.0)
        model.lm.lm_head.weight.zero_()
        model.lm.lm_head.weight[EOC] = 1.0
    out = generate(model, tokens, images, max_new_tokens=10, eoc_id=EOC, num_beams=num_beams)
    assert out[0, -1] == EOC and out.shape[1] == tokens.shape[1] + 1


def test_too_long_is_an_error_before_any_work():
    model, tokens, images = model_and_prompt()
    with pytest.raises(ValueError, match="max_len"):
        generate(model, tokens, images, max_new_tokens=100, eoc_id=EOC)


@pytest.mark.parametrize("num_beams", [1, 3])
def test_prompts_continued_together_are_continued_as_one_by_one(num_beams):
    """A batch of prompts is written as each prompt alone; a row that ends early is filled with <eoc>. The committed
    many-links model writes a name after `<image> is` and a caption, one word longer, after `<image> a`."""
    from pathlib import Path

    from flamingo_lite.tiny import fewshot, heldout

    model, setup = fewshot.load_model(Path(__file__).resolve().parents[1] / "assets" / "fewshot_many_links.pt")
    tok = fewshot.fewshot_tokenizer(setup.links)
    prompts, pictures = [], []
    for i, ep in enumerate(fewshot.make_heldout_episodes(6, seed=0, pool_size=setup.pool_size)):
        classes = ep.pool_classes[:4]
        prompts.append(tok.encode(heldout.template_words(classes, ep.names, heldout.HELDOUT_WORD if i % 2 else fewshot.IS)))
        pictures.append(torch.cat([ep.pool_images[:4], ep.query_image[None]]))  # (5, 3, H, W)
    batch, images = torch.tensor(prompts), torch.stack(pictures)  # (6, n), (6, 5, 3, H, W)
    eoc, n = tok.eoc_id, batch.shape[1]
    together = generate(model, batch, images, max_new_tokens=5, eoc_id=eoc, num_beams=num_beams)
    alone = [generate(model, batch[i : i + 1], images[i : i + 1], max_new_tokens=5, eoc_id=eoc, num_beams=num_beams)[0]
             for i in range(len(batch))]
    assert len({len(one) for one in alone}) > 1, "rows of different lengths: a name, or a caption"
    assert together.shape == (len(batch), max(len(one) for one in alone))
    for row, one in zip(together, alone):
        assert torch.equal(row[: len(one)], one) and one[-1] == eoc
        assert bool((row[len(one) :] == eoc).all())  # filled after its first <eoc>
    assert torch.equal(together, generate(model, batch, images, max_new_tokens=5, eoc_id=eoc, num_beams=num_beams,
                                          use_cache=False))


def test_pictures_for_another_number_of_prompts_is_an_error_before_any_work():
    model, tokens, images = model_and_prompt()
    with pytest.raises(ValueError, match=r"one row of pictures per prompt: tokens \(2, 12\) and images \(1, 2, 3, 16, 16\)"):
        generate(model, tokens.repeat(2, 1), images, max_new_tokens=2, eoc_id=EOC)
