"""Device discipline of chapters 1-5's code paths and chapter 7's knockouts, proved without a GPU
(tests/device_discipline.py): every factory call in headflow names its device, every input is moved to the model's device,
every result comes back with ``.cpu()`` before ``.numpy()``, no CPU tensor is mixed into the
model's computation."""
import pytest
import torch
from device_discipline import DeviceDiscipline

from headflow.findings import flow, layers, redundancy
from headflow.images import coco
from headflow.mechanism import evaluate, tokens
from headflow.method import crossfit, experiment, rankings, study
from headflow.task.prompt import build_prompt, question_text


@pytest.fixture()
def organism_study(monkeypatch, tmp_path, organism_model):
    net, processor = organism_model
    monkeypatch.setattr(study.models, "load", lambda *a, **k: (net, processor))
    monkeypatch.setattr(study, "RUN_DIR", tmp_path / "runs")
    return net, processor


def test_the_mode_catches_what_a_gpu_would_refuse():
    lin = torch.nn.Linear(3, 2)
    with DeviceDiscipline(lin) as d:
        lin(torch.zeros(4, 3, device="cpu"))  # input never moved
        y = lin(torch.zeros(4, 3, device="cpu").to(lin.weight.device))
        y.detach().numpy()  # not brought back
        y.detach().cpu().numpy()  # fine
    found = d.report()
    assert "linear: a CPU tensor of shape (4, 3) mixed" in found and ".numpy() of a tensor on the model's device" in found
    assert len(d.violations) == 2


def test_chapters_1_to_5_keep_device_discipline(organism_study):
    net, processor = organism_study
    with DeviceDiscipline(net) as d:
        # chapter 1: clean answers, token groups
        set_file = coco.resolve_set("fashionscenes/eval")
        examples = coco.load_set(set_file)[:4]
        words = coco.class_names(set_file)
        q = question_text("object")
        evaluate.evaluate(net, processor, [e.load_image() for e in examples], words,
                          [words.index(e.class_name) for e in examples], q, batch_size=2)
        inputs = dict(processor(images=[examples[0].load_image()], text=[build_prompt(processor, q)],
                                return_tensors="pt"))
        tokens.resolve(processor, net.config, q, inputs, mask=examples[0].mask)
        # the study: baseline from reference images
        st = study.setup("organism", "fashionscenes/eval", "object", per_class=1, n_reference=3)
        st.tasks = st.tasks[:4]
        # chapter 2: single heads and joint ablation
        single, joint = redundancy.single_and_joint(st)
        redundancy.random_sets(st, single, joint, 2, 0)
        # chapter 3: attribution runs (fast path), scope all (full forwards), fits
        runs = study.attribution_runs(st, 40, 0.5, 0)
        experiment.masks_y(net, st.tasks[0], st.baseline, torch.ones(3, st.n_layers, st.n_heads, dtype=torch.bool,
                                                                     device="cpu"), scope="all")
        fits = study.fits(runs)
        # chapter 4: baseline rankings (attention weights, attribution patching's backward), cross-fitting
        scores, _ = crossfit.method_scores(st, fits, runs, 40)
        crossfit.run(st, scores, runs, 2, 0, 1, 2)
        # chapter 5: probes on residual states, attention-weight proxies
        layers.analyse(st, fits, runs, [0.1], 5, 0, n_probe_per_class=2, folds=2)
        rankings.attention_weight(net, st.tasks[0], "final", "value-norm")
        # chapter 7: knockouts (full forwards with per-row masks)
        plan = flow.chapter_plan(st.n_layers, {"all heads": None}, window=4, sensitivity_window=None)
        flow.run_image(st, st.tasks[0], plan)
        # chapter 6's class-agnostic target (the clean answer distribution, then KL per mask)
        experiment.masks_y(net, st.tasks[1], st.baseline, torch.ones(2, st.n_layers, st.n_heads, dtype=torch.bool,
                                                                     device="cpu"), "answer-kl")
    assert not d.violations, "device discipline broken:\n" + d.report()


def test_attribute_and_the_notebook_share_a_run_store_and_a_dtype_does_not(monkeypatch, tmp_path):
    """The run-store key holds the device and precision the model really runs in: headflow.attribute
    and a chapter with the same settings (device None or "cpu" alike) find each other's units; bf16 does not."""
    from headflow.scale import attribute

    monkeypatch.setattr(study, "RUN_DIR", tmp_path / "runs")
    plan = attribute.Plan(model="tiny:llava", per_class=1, n_reference=2, keep="all", n_masks=20)
    st, store, _ = attribute.prepare(plan)
    chapter = study.setup("tiny:llava", "fashionscenes/eval", "object", per_class=1, n_reference=2, keep="all",
                          device="cpu", dtype="float32")
    same = study.store_for(chapter, "attribution", n_masks=20, ablation_rate=0.5, seed=0)
    assert same.root == store.root and st.meta["device"] == "cpu" and st.meta["dtype"] == "float32"
    half = study.setup("tiny:llava", "fashionscenes/eval", "object", per_class=1, n_reference=2, keep="all",
                       dtype="bfloat16")
    assert half.meta["dtype"] == "bfloat16"
    assert study.store_for(half, "attribution", n_masks=20, ablation_rate=0.5, seed=0).root != store.root
