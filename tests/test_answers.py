"""Answers in any vocabulary (headflow.task.answers): the rules, the teacher-forced target through
every path, correctness from a greedy decode, and the organism's y unchanged."""
import numpy as np
import pytest
import torch

from headflow.images import coco
from headflow.images import fashionscenes as data
from headflow.mechanism import evaluate
from headflow.mechanism import interventions as iv
from headflow.method import experiment
from headflow.task import answers
from headflow.task.prompt import answer_token_ids, build_prompt, question_text


@pytest.fixture(scope="module")
def scenes():
    specs = data.sample_specs("test", 24, seed=11)
    images, _ = data.render_many(specs)
    return specs, images


# ------------------------------------------------------------------------------------ the rules
def test_normalise_and_match():
    assert answers.normalise("A dog.\nmore") == "dog"
    assert answers.normalise("  The  Hot   Dog! ") == "hot dog"
    assert answers.matches("dogs", "dog") and answers.matches("dog on a sofa", "dog")
    assert answers.matches("television", "tv") and answers.matches("sofa", "couch")
    assert not answers.matches("carrot", "car") and not answers.matches("hot dog", "dog")
    assert answers.matches("t-shirt", "t-shirt") and not answers.matches("t-shirt", "shirt")


def test_organism_answers_are_decided_by_their_first_token(tiny_llava):
    _, processor = tiny_llava
    q = question_text("object")
    got = answers.answers(processor, data.CLASSES, q)
    old = answer_token_ids(processor, data.CLASSES, prompt=build_prompt(processor, q))
    assert [a.target_id for a in got] == old and all(a.decision == 0 for a in got)
    assert all(list(a.competitor_ids) == [i for i in old if i != a.target_id] for a in got)
    form = answers.answer_form(processor, q)
    assert form.separator == " " and form.end.startswith("</s>")


def test_shared_first_tokens_and_prefixes_are_resolved(tiny_llava):
    """On the organism's word-level vocabulary, "red bag" / "red boot" share their first token and
    "red" is a prefix of both: each class gets its own decision token, the end of the answer
    telling "red" from "red bag"."""
    _, processor = tiny_llava
    tok = processor.tokenizer
    words = ["red bag", "red boot", "bag", "red"]
    got = {a.word: a for a in answers.answers(processor, words, question_text("object"))}
    ids = lambda *w: [tok.convert_tokens_to_ids(x) for x in w]  # noqa: E731
    assert got["red bag"].forced == tuple(ids("red")) and got["red bag"].target_id == ids("bag")[0]
    assert set(got["red bag"].competitor_ids) == set(ids("boot", "</s>"))
    assert got["red"].forced == tuple(ids("red")) and got["red"].target_id == tok.eos_token_id
    assert got["bag"].decision == 0 and set(got["bag"].competitor_ids) == set(ids("red"))
    with pytest.raises(ValueError, match="tokenise identically"):
        answers.answers(processor, ["bag", "bag  "], question_text("object"))
    with pytest.raises(ValueError, match="not in the tokenizer's vocabulary"):
        answers.answers(processor, ["giraffe", "bag"], question_text("object"))
    with pytest.raises(ValueError, match="unknown answer case"):
        answers.surface("bag", "upper")


# ------------------------------------------------------------------------------------ the target
def test_teacher_forced_target_is_the_same_on_every_path(tiny_llava):
    """The decision logit after the forced tokens: the fast path (prefix reuse over a longer
    suffix), full forwards and the clean evaluation all give the logit a plain forward gives."""
    model, processor = tiny_llava
    set_file = coco.resolve_set("fashionscenes/eval")
    examples = coco.load_set(set_file)[::97][:3]
    words = ["red bag", "red boot", "bag", "red"]
    q = question_text("object")
    tasks = experiment.prepare(processor, examples, words, q, answers=["red bag", "red", "bag"])
    assert [t.n_forced for t in tasks] == [1, 1, 0]
    keep = iv.keep_mask(model)[None].repeat(4, 1, 1)
    keep[1, 0, :2] = False
    keep[2] = False
    for t in tasks:
        n = t.inputs["input_ids"].shape[1]
        assert n == t.prompt_inputs["input_ids"].shape[1] + t.n_forced
        with torch.inference_mode():
            plain = model(**t.inputs).logits[0, -1, t.target_id].item()
        fast = experiment.masks_y(model, t, iv.Baseline("zero"), keep)
        full = experiment.target_values(experiment.full_logits(model, t, iv.Baseline("zero"), keep), t)
        np.testing.assert_allclose(fast, full, atol=2e-5)
        assert abs(fast[0] - plain) < 2e-5
    res = evaluate.evaluate(model, processor, [e.load_image() for e in examples], words, [0, 3, 2], q)
    for i, t in enumerate(tasks):
        with torch.inference_mode():
            want = model(**t.inputs).logits[0, -1]
        assert abs(res["y"][i] - want[t.target_id].item()) < 2e-5
        assert abs(res["logit_diff"][i] - (want[t.target_id] - want[t.other_ids].max()).item()) < 2e-5


def test_reference_baseline_ignores_the_forced_tokens(tiny_llava):
    model, processor = tiny_llava
    examples = coco.load_set(coco.resolve_set("fashionscenes/eval"))[::97][:3]
    words = ["red bag", "bag"]
    tasks = experiment.prepare(processor, examples, words, question_text("object"), answers=["red bag", "bag", "bag"])
    base = experiment.reference_baseline(model, tasks, "dataset-mean", batch_size=3)  # mixed lengths, one batch
    plain = experiment.reference_baseline(model, [tasks[1], tasks[2], tasks[1]], "dataset-mean", batch_size=3)
    assert base.keys[0].shape == plain.keys[0].shape


# ------------------------------------------------------------------------------------ the organism
def test_organism_y_is_unchanged(organism_model, scenes):
    """On the organism (one-token answers) the new scoring gives bit-identical y, logit difference,
    correctness and predicted classes to the first-token rule; the decode's first-step logits equal
    a plain forward's."""
    model, processor = organism_model
    specs, images = scenes
    for q, labels in (("object", [s.label for s in specs]), ("color", [s.color for s in specs])):
        words = data.ANSWER_WORDS[q]
        qt = question_text(q)
        res = evaluate.evaluate(model, processor, images, words, labels, qt, batch_size=16)
        logits = evaluate.final_logits(model, processor, images, qt, batch_size=16)
        old = evaluate.answer_logits(logits, answer_token_ids(processor, words, prompt=build_prompt(processor, qt)),
                                     labels)
        for key in ("y", "logit_diff", "correct", "predicted_word_index"):
            assert np.array_equal(res[key], old[key]), (q, key)
        first, _ = evaluate.greedy_answers(model, processor, images, qt, 2, batch_size=16)
        assert torch.equal(first, logits)
        tasks = experiment.prepare(processor, coco.load_set(coco.resolve_set("fashionscenes/eval"))[:2], words, qt,
                                   answers=[words[0], words[1]])
        assert [t.target_id for t in tasks] == [old_id for old_id in answer_token_ids(
            processor, words, prompt=build_prompt(processor, qt))[:2]] and all(t.n_forced == 0 for t in tasks)


def test_correctness_is_what_the_model_says(tiny_llava, scenes):
    model, processor = tiny_llava
    _, images = scenes
    q = question_text("object")
    res = evaluate.evaluate(model, processor, images[:8], data.CLASSES, [0] * 8, q)
    assert len(res["said"]) == 8
    for text, ok in zip(res["said"], res["correct"]):
        assert ok == answers.matches(text, data.CLASSES[0])
