"""The committed few-shot models that lesson 12 loads are what their documented commands make:

    python -m flamingo_lite.train --task fewshot --seed 0 --out benchmarks/results/fewshot_lesson.json \\
        --save-model assets/fewshot_model.pt
    python -m flamingo_lite.train --task fewshot --seed 0 --many-links --out benchmarks/results/fewshot_many_links.json \\
        --save-model assets/fewshot_many_links.pt
    python -m flamingo_lite.train --task fewshot --seed 0 --colliding-links --out benchmarks/results/fewshot_colliding_links.json \\
        --save-model assets/fewshot_colliding_links.pt

The test runs each command (a few minutes on 2 CPU cores) and compares each pair of models. Training 1500 steps in
float32 on another x86 CPU (other vector kernels, other summation orders) need not give the same bits, so the
models are compared by what they do: the same setup, the same shots curve on held-out episodes to within 0.05
at every k, and gates that opened as far (|tanh(gate)| beyond 0.2, and within 0.15 of each other). A gate's sign is
not compared: tanh(g) f(x) is tanh(-g) (-f(x)), and a retrain may take either.

Measured: three retrains of fewshot_model.pt on an AMD EPYC (native kernels on 2 threads, ATEN_CPU_CAPABILITY=avx2,
and =default on 1 thread) against the committed model, made on another CPU: shots curves within 0.015 at every k,
gates within 0.069. A retrain of fewshot_many_links.pt on 1 thread (the committed one was made on 2, on an Intel
Xeon): shots curve within 0.015, |tanh(gate)| within 0.032, and its first ff gate opened the other way (-0.54
against +0.55). Its held-out template is not compared: it moved from 0.23 to 0.44 at 16 shots (benchmarks/HELDOUT.md
says why that number depends on the run)."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

from flamingo_lite.tiny import fewshot as fs

ROOT = Path(__file__).resolve().parent.parent
MODELS = {  # the committed model, the options of its command, and the training links and caption articles they give
    "fewshot_model.pt": ([], (fs.IS,), ("a",)),
    "fewshot_many_links.pt": (["--many-links"], fs.MANY_LINKS, ("a",)),
    "fewshot_colliding_links.pt": (["--colliding-links"], fs.COLLIDING_LINKS, fs.CAPTION_ARTICLES),
}
GATE_TOL = 0.15  # about twice the widest gap measured across kernels (0.069)


@pytest.mark.parametrize("name", MODELS)
def test_the_committed_model_loads_and_says_how_it_was_made(name):
    model, setup = fs.load_model(ROOT / "assets" / name)
    _, links, articles = MODELS[name]
    assert setup == fs.FewShotSetup(seed=0, log_every=setup.log_every, links=links, articles=articles)  # the command line's defaults, seed 0
    assert not model.training and not any(p.requires_grad for p in model.lm.parameters())


@pytest.mark.parametrize("name", MODELS)
def test_the_documented_command_reproduces_the_committed_model(tmp_path, name):
    saved, history_file = tmp_path / name, tmp_path / "history.json"
    subprocess.run(
        [sys.executable, "-m", "flamingo_lite.train", "--task", "fewshot", "--seed", "0", *MODELS[name][0],
         "--out", str(history_file), "--save-model", str(saved), "--threads", "2", "--no-progress"],
        check=True, capture_output=True, text=True, timeout=1800,
    )
    committed, setup = fs.load_model(ROOT / "assets" / name)
    fresh, fresh_setup = fs.load_model(saved)
    assert fresh_setup == setup
    tok = fs.fewshot_tokenizer(setup.links)
    episodes = fs.make_heldout_episodes(200, seed=setup.seed)
    for k in (0, 2, 8, 32):
        a = fs.evaluate_shots(committed, episodes, k, tok)["scoring"]
        b = fs.evaluate_shots(fresh, episodes, k, tok)["scoring"]
        assert abs(a - b) <= 0.05, f"k={k}: committed {a:.3f}, reproduced {b:.3f}"
    gates_a, gates_b = committed.gates(), fresh.gates()
    for name in ("attn", "ff"):
        for layer, (a, b) in enumerate(zip(gates_a[name], gates_b[name])):
            # |tanh(gate)|: the sign is the run's, not the recipe's (tanh(g) f(x) = tanh(-g) (-f(x)), and f's last
            # layer is free to take either), as lesson 13 says
            assert abs(a) > 0.2 and abs(b) > 0.2, f"{name} gate {layer}: {a:.3f} vs {b:.3f}"
            assert abs(abs(a) - abs(b)) <= GATE_TOL, f"{name} gate {layer}: committed |{a:.3f}|, reproduced |{b:.3f}|"
    history = json.loads(history_file.read_text())
    assert set(history["shots_curve"]) == {str(k) for k in setup.shots}
