"""The model organism: a small LLaVA trained in this repository.

It is transformers' own ``LlavaForConditionalGeneration`` (CLIP vision tower, MLP projector,
LLaMA language model) with the LLaVA-1.5 chat template ``USER: <image>\\n{question} ASSISTANT:``
and a word-level tokenizer built offline, in which every answer word, "ASSISTANT" and ":" are
single tokens.  The vision tower is trained first and alone, *per patch*, on multi-object scenes
(:mod:`headflow.organism.tower`, ``make tower``: our stand-in for a pretrained CLIP, with no
pooled-feature head) and is frozen in every organism.  Training is then a list of stages
(``Recipe.stages``), each logged:

``text``
    the language model alone (no image) learns in-context retrieval over its own vocabulary:
    ``USER: <context words> <question> ASSISTANT:`` -> the context word of the asked type (one
    class, one colour and one position word hidden among filler words, shuffled, a context of
    random length).  It teaches attention heads to find a word of a requested kind anywhere
    earlier in the sequence and move it to the final position: our stand-in for text pretraining
    (the ``bound`` task, which needs binding first, stayed at 51-53% after 1,200 steps in both
    organisms trained with it, about its type guess, so the default went back to ``flat``, which
    it learns);
``align``
    the projector only, language model and tower frozen (LLaVA's stage 1);
``llava``
    projector and language model (tower frozen) answer the three image questions (LLaVA's
    stage 2; the loss is on the answer token at the final position and on the end-of-answer token after
    it, teacher forced: the organism ends its answers, as a chat model does).

Three recipes are committed (:data:`RECIPES`), all on one frozen vision tower (stored once,
:mod:`headflow.models.organism_store`):

``organism`` (the default)
    multi-object scenes (the questions ask about the main object, the largest item, at least
    twice every other item's area), the ``flat`` text task (:mod:`headflow.organism.texttasks`),
    then ``align``, then ``llava`` with the language model at ``lm_lr_scale`` of the projector's
    rate and ``text_replay_batch`` text examples beside every batch;
``organism-seed2``
    the same recipe with another seed;
``organism-scratch``
    the same scenes and tower, ``align`` then ``llava``: a language model never trained on text
    learns to read from scratch (no replay, at the projector's rate: it has nothing to protect).

``organism-single`` (single-object scenes) retired with the pooled tower; its last numbers stay in
the verdict history (appendix 99).

Run ``python -m headflow.organism --recipe NAME`` (``make NAME``); every int or float field of the
recipe is an option (``--llava-steps 500``).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
import transformers
from PIL import Image
from safetensors.torch import load_file

from headflow.images import fashionscenes as data
from headflow.images.fashionscenes import ANSWER_WORDS
from headflow.models import loading as models
from headflow.models import organism_store
from headflow.models.llava_builder import LlavaArch, build_model, build_processor, to_pixels
from headflow.organism import texttasks
from headflow.task import answers
from headflow.task.prompt import QUESTION_TYPES, QUESTIONS, answer_token_ids, build_prompt
from headflow.util.hashing import sha256
from headflow.util import progress

STAGES = ("text", "align", "llava")
LEGACY_STAGES = ("vision",)  # the pooled-head tower stage of the retired organisms (read from their logs only)


#: The merge the organisms train with: chosen by ``choose_merge`` on the first per-patch tower's crowd-scene probe
#: (issue 28, measured before any organism trained on it).
MERGE = data.CLASS_MERGE  # the study's merge (headflow.images.fashionscenes.CLASS_MERGE)


@dataclass
class Recipe(LlavaArch):
    """Architecture (:class:`headflow.models.llava_builder.LlavaArch`) and training schedule of the
    organism (all recorded in the training log).

    The defaults are the default organism; :func:`scratch_recipe` gives ``organism-scratch``."""

    stages: tuple = ("text", "align", "llava")
    tower_from: str = "vision-tower"  # the per-patch tower's folder (make tower), frozen
    scene_layout: str = "mixed-swap"  # how multi-object scenes are drawn (headflow.images.fashionscenes.LAYOUTS)
    scene_objects: tuple | None = None  # items per scene (lo, hi); None: the layout's
    # the object classes: at most one merge group (name, members), decided from the recognition ceiling and
    # the tower's probes before any organism trained (headflow.organism.ceiling.choose_merge); None: the ten
    class_merge: tuple | None = MERGE
    text_task: str = "flat"  # "flat" (one word per type) or "bound" (binding + keyed retrieval)
    # text: in-context retrieval, language model alone
    text_steps: int = 300
    text_batch: int = 128
    text_lr: float = 1.5e-3
    text_min_fillers: int = 3  # flat task
    text_max_fillers: int = 24
    text_min_items: int = 1  # bound task (1 item: retrieval by type alone, the easy case)
    text_max_items: int = 4
    # align: the projector only
    align_steps: int = 300
    align_batch: int = 64
    align_lr: float = 2e-3
    # llava: projector + language model
    llava_steps: int = 900
    llava_batch: int = 64
    llava_lr: float = 1.5e-3
    tower_lr_scale: float = 0.0  # the pretrained tower moves slower in the llava stage (0: frozen)
    end_token_loss: bool = True  # also train the end-of-answer token after the answer (it ends its answers)
    balanced_items: bool = True  # training scenes' main objects drawn class-balanced
    lm_lr_scale: float = 0.5  # the language model's rate in the llava stage, relative to the projector's
    text_replay_batch: int = 32  # text-task examples replayed beside every llava batch (0: none)
    llava_question_offset: int = 32  # seed offset of the llava stage's question types (organism-scratch: 2)
    question_probs: tuple = (0.5, 0.25, 0.25)  # object, color, position
    warmup: int = 100
    weight_decay: float = 0.05
    bf16: bool = True
    eval_every: int = 200
    ckpt_every: int = 100  # steps between resumable checkpoints (Checkpoint)
    n_eval_during: int = 600
    monitor_seed: int = 2000  # the scenes progress is monitored on (no checkpoint is selected on them)
    eval_seed: int = 1000  # the held-out scenes of the final evaluation, which no training step sees
    n_eval_final: int = 3000
    threads: int = 2

    def __post_init__(self):
        bad = [s for s in self.stages if s not in STAGES + LEGACY_STAGES]
        if bad or not self.stages:
            raise ValueError(f"unknown training stage(s) {bad}; stages are drawn from {STAGES}")
        if self.text_min_fillers < 0 or self.text_max_fillers < self.text_min_fillers:
            raise ValueError("need 0 <= text_min_fillers <= text_max_fillers")
        if self.text_task not in texttasks.TASKS:
            raise ValueError(f"unknown text task {self.text_task!r}; choose one of {texttasks.TASKS}")
        if self.scene_layout not in data.LAYOUTS:
            raise ValueError(f"unknown scene layout {self.scene_layout!r}; choose one of {sorted(data.LAYOUTS)}")
        self.scene_objects = tuple(self.scene_objects or data.LAYOUTS[self.scene_layout].objects)
        if self.class_merge is not None:
            self.class_merge = (str(self.class_merge[0]), tuple(self.class_merge[1]))
            data.class_vocabulary(self.class_merge)  # an unknown class or too few left is refused here
        self.stages = tuple(self.stages)
        self.question_probs = tuple(self.question_probs)


def scratch_recipe(**overrides) -> Recipe:
    """``organism-scratch``: the default's scenes, tower and schedule without the text stage: the
    projector aligned into a language model that never saw text, then both trained together (the
    language model at the projector's rate and with no text replay: it has nothing to protect)."""
    return Recipe(**{"stages": ("align", "llava"), "lm_lr_scale": 1.0, "text_replay_batch": 0, **overrides})


SEED2 = 1

#: The recipes :func:`train` trains (issue 28's organisms, on the per-patch tower and the ``mixed-swap`` stream).
RECIPES = {"organism": Recipe, "organism-seed2": lambda **o: Recipe(**{"seed": SEED2, **o}),
           "organism-scratch": scratch_recipe}

def recipe_of(name: str, **overrides) -> Recipe:
    """The recipe of organism ``name`` (:data:`RECIPES`), with ``overrides``."""
    if name not in RECIPES:
        raise ValueError(f"unknown organism recipe {name!r}; choose one of {sorted(RECIPES)}")
    return RECIPES[name](**overrides)


# ------------------------------------------------------------------------------------ fast batches
class PromptCache:
    """Token ids of each question's prompt, built once with the real processor and chat template,
    so training batches skip the processor.  Checks the fast pixel path against the processor."""

    def __init__(self, processor, sample_image: np.ndarray):
        self.ids = []
        for q in QUESTION_TYPES:
            enc = processor(images=Image.fromarray(sample_image), text=build_prompt(processor, QUESTIONS[q]),
                            return_tensors="pt")
            self.ids.append(enc["input_ids"][0])
            diff = (to_pixels(sample_image[None]) - enc["pixel_values"]).abs().max().item()
            if diff > 1e-4:
                raise RuntimeError(f"fast pixel normalisation differs from the processor by {diff:.2e}")
        self.pad_id = processor.tokenizer.pad_token_id
        self.answer_ids = [torch.tensor(answer_token_ids(processor, ANSWER_WORDS[q], single_token=True))
                           for q in QUESTION_TYPES]
        # the token that ends an answer in this chat template (</s>): what a real model says after its answer
        ends = {a.tokens[-1] for q in QUESTION_TYPES for a in answers.answers(processor, ANSWER_WORDS[q], QUESTIONS[q])}
        if len(ends) != 1:
            raise RuntimeError(f"the organism's answers end with several tokens {sorted(ends)}; expected one")
        self.end_id = ends.pop()

    def batch(self, qtypes: list[int], answer: torch.Tensor | None = None) -> tuple[torch.Tensor, ...]:
        """Left-padded ``input_ids``, ``attention_mask`` and ``position_ids``, each ``(B, L)``; with
        ``answer`` ``(B,)`` each prompt is followed by its answer token (teacher forced)."""
        rows = [self.ids[q] if answer is None else torch.cat([self.ids[q], answer[i:i + 1]])
                for i, q in enumerate(qtypes)]
        L = max(len(r) for r in rows)
        ids = torch.full((len(qtypes), L), self.pad_id, dtype=torch.long)
        att = torch.zeros((len(qtypes), L), dtype=torch.long)
        for row, r in enumerate(rows):
            ids[row, L - len(r):] = r
            att[row, L - len(r):] = 1
        return ids, att, (att.cumsum(1) - 1).clamp(min=0)


def final_logits(model, prompts: PromptCache, images_u8: np.ndarray, qtypes: list[int], bf16: bool) -> torch.Tensor:
    """Logits ``(B, vocab)`` at the final prompt position."""
    ids, att, pos = prompts.batch(qtypes)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        out = model(input_ids=ids, attention_mask=att, position_ids=pos, pixel_values=to_pixels(images_u8),
                    logits_to_keep=1)
    return out.logits[:, -1].float()


def answer_loss(model, prompts: PromptCache, images_u8: np.ndarray, qtypes: list[int], targets: torch.Tensor,
                bf16: bool) -> torch.Tensor:
    """Cross-entropy of the answer token at the final prompt position plus that of the end-of-answer
    token after it (the answer teacher forced), so the organism ends its answer as a chat model does."""
    ids, att, pos = prompts.batch(qtypes, targets)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        logits = model(input_ids=ids, attention_mask=att, position_ids=pos, pixel_values=to_pixels(images_u8),
                       logits_to_keep=2).logits.float()
    end = torch.full_like(targets, prompts.end_id)
    return F.cross_entropy(logits[:, -2], targets) + F.cross_entropy(logits[:, -1], end)


@torch.inference_mode()
def quick_accuracy(model, prompts: PromptCache, images, labels, bf16: bool, batch: int = 250) -> dict:
    """Unrestricted-argmax accuracy per question type; ``labels`` is ``(N, 3)`` (class, colour, position; a
    position of -1, a size-swapped main object without a position word, is not asked)."""
    was_training = model.training
    model.eval()
    acc = {}
    for q, name in enumerate(QUESTION_TYPES):
        asked = np.flatnonzero(labels[:, q] >= 0)
        correct = 0
        for s in range(0, len(asked), batch):
            rows = asked[s:s + batch]
            logits = final_logits(model, prompts, images[rows], [q] * len(rows), bf16)
            target = prompts.answer_ids[q][torch.from_numpy(labels[rows, q])]
            correct += int((logits.argmax(-1) == target).sum())
        acc[name] = correct / max(len(asked), 1)
    model.train(was_training)
    return acc


# ------------------------------------------------------------------------------------ training
def _lr_factor(step: int, total: int, warmup: int) -> float:
    """Linear warm-up, then cosine decay to 10%."""
    return min(1.0, (step + 1) / warmup) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * step / total)))


def ask(rng: np.random.Generator, labels: np.ndarray, probs) -> list[int]:
    """A question type per scene, drawn by ``probs`` (object, colour, position); a scene whose main object has
    no position word (label -1: a size swap) is asked about its object or colour instead, in proportion."""
    qtypes = rng.choice(3, len(labels), p=list(probs))
    wordless = np.flatnonzero((labels[:, 2] < 0) & (qtypes == 2))
    if len(wordless):
        p = np.asarray(probs[:2], float)
        qtypes[wordless] = rng.choice(2, len(wordless), p=p / p.sum())
    return qtypes.tolist()


def _labels(specs) -> np.ndarray:
    return np.array([(s.label, s.color, s.position) for s in specs], np.int64)


class SceneStream:
    """Endless, seeded batches of freshly rendered training scenes (Fashion-MNIST train split, main
    objects class-balanced: :func:`headflow.images.fashionscenes.random_items`)."""

    def __init__(self, seed: int, objects=(1, 1), balanced: bool = True):
        self.rng = np.random.default_rng(seed)
        self.objects, self.balanced = tuple(objects), balanced
        self.n_items = len(data.load_fashion_mnist("train")[1])

    def next(self, n: int):
        items = data.random_items("train", n, self.rng) if self.balanced else self.rng.integers(0, self.n_items, n)
        specs = data.sample_specs("train", n, int(self.rng.integers(2**31)), items=items, objects=self.objects)
        images, _ = data.render_many(specs)
        return images, _labels(specs)


def _optimizer(groups: list[dict], lr: float, recipe: Recipe):
    return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.98), weight_decay=recipe.weight_decay)


def _set_lr(opt, lr: float, step: int, total: int, recipe: Recipe) -> None:
    for g in opt.param_groups:
        g["lr"] = lr * g.get("scale", 1.0) * _lr_factor(step, total, recipe.warmup)


def text_monitor(recipe: Recipe, processor, n: int = 600):
    """The fixed text-task batch that text accuracy is measured on after every stage."""
    return texttasks.make(recipe.text_task, processor.tokenizer, recipe.seed + 4, recipe).batch(n)


class Checkpoint:
    """Resumable training.  Every ``ckpt_every`` steps and at the end of each stage, the model, the
    stage's optimiser, every random stream (scenes, questions, text task, replay) and the log go to
    ``path`` (written to a temporary file and renamed); a later run of the same recipe finds it, skips
    the finished stages and resumes the current one at its step, with the same streams."""

    def __init__(self, path: Path, recipe: Recipe):
        self.path, self.every, self.state = Path(path), recipe.ckpt_every, None
        if self.path.exists():
            state = torch.load(self.path, weights_only=False)
            if state["recipe"] == asdict(recipe):
                self.state = state
                progress.write(f"[organism] resuming: stages done {state['finished']}, "
                               f"{state['stage']} at step {state['step']}")
            else:
                progress.write(f"[organism] {self.path} is another recipe's checkpoint: starting afresh")

    @property
    def finished(self) -> list[str]:
        return self.state["finished"] if self.state else []

    def resume(self, stage: str, opt, rngs: dict) -> int:
        """The step to start ``stage`` at (its optimiser and ``rngs`` restored where it was interrupted)."""
        if not self.state or self.state["stage"] != stage:
            return 0
        opt.load_state_dict(self.state["opt"])
        for name, rng in rngs.items():
            rng.bit_generator.state = self.state["rngs"][name]
        return self.state["step"]

    def save(self, model, stage: str | None, step: int, opt, rngs: dict, log: dict, finished: list[str],
             recipe: Recipe) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.state = {"recipe": asdict(recipe), "model": model.state_dict(), "stage": stage, "step": step,
                      "opt": opt.state_dict() if opt is not None else None, "finished": list(finished),
                      "rngs": {k: r.bit_generator.state for k, r in rngs.items()}, "log": log,
                      "torch_rng": torch.get_rng_state()}
        tmp = self.path.with_suffix(".tmp")
        torch.save(self.state, tmp)
        os.replace(tmp, self.path)


def text_loss(model, task, n: int, bf16: bool) -> torch.Tensor:
    ids, att, pos, y, _ = task.batch(n)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        logits = model(input_ids=ids, attention_mask=att, position_ids=pos, logits_to_keep=1).logits[:, -1]
    return F.cross_entropy(logits.float(), y)


def train_text(model, recipe: Recipe, processor, log: dict, ck: Checkpoint | None = None,
               streams: dict | None = None) -> None:
    """Stage ``text``: the language model alone learns the text task (no image, no projector)."""
    task = texttasks.make(recipe.text_task, processor.tokenizer, recipe.seed + 3, recipe)
    task.check()
    monitor = text_monitor(recipe, processor, 512)
    params = list(model.model.language_model.parameters()) + list(model.lm_head.parameters())
    opt = _optimizer(params, recipe.text_lr, recipe)
    rngs = {**(streams or {}), "text": task.rng}
    start = ck.resume("text", opt, rngs) if ck else 0
    rows, t0 = log.setdefault("text_stage", []), time.perf_counter() - 60 * (log.get("text_minutes_so_far") or 0)
    model.train()
    bar = progress.bar(range(start, recipe.text_steps), desc=f"stage text: {recipe.text_task} retrieval",
                       mininterval=5, initial=start, total=recipe.text_steps)
    for step in bar:
        _set_lr(opt, recipe.text_lr, step, recipe.text_steps, recipe)
        loss = text_loss(model, task, recipe.text_batch, recipe.bf16)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if (step + 1) % recipe.eval_every == 0 or step + 1 == recipe.text_steps:
            acc = texttasks.accuracy(model, monitor, recipe.bf16)
            row = {"step": step + 1, "minutes": round((time.perf_counter() - t0) / 60, 2), "loss": round(loss.item(), 4),
                   "retrieval": acc["all"], **{f"retrieval_{k}": v for k, v in acc.items() if k != "all"}}
            rows.append(row)
            bar.set_postfix(loss=f"{loss.item():.3f}", retrieval=f"{row['retrieval']:.3f}")
            progress.write(f"[text] {row}")
        if ck and (step + 1) % ck.every == 0 and step + 1 < recipe.text_steps:
            log["text_minutes_so_far"] = (time.perf_counter() - t0) / 60
            ck.save(model, "text", step + 1, opt, rngs, log, ck.finished, recipe)
    log.pop("text_minutes_so_far", None)
    log["text_minutes"] = round((time.perf_counter() - t0) / 60, 2)


def train_answers(model, recipe: Recipe, stage: str, stream: SceneStream, prompts: PromptCache, eval_images,
                  eval_labels, log: dict, replay=None, ck: Checkpoint | None = None, streams: dict | None = None) -> None:
    """Stage ``align`` (projector only) or ``llava`` (projector + language model): answer the three
    question types, loss on the answer token and the end-of-answer token after it.  The vision tower is frozen unless
    ``tower_lr_scale > 0``; in ``llava`` the language model learns at ``lm_lr_scale`` of the
    projector's rate, and ``replay`` (a text task) adds ``text_replay_batch`` text examples' loss
    to every step."""
    projector = list(model.model.multi_modal_projector.parameters())
    lm = list(model.model.language_model.parameters()) + list(model.lm_head.parameters())
    tower = list(model.model.vision_tower.parameters())
    if stage == "align":
        groups = [{"params": projector, "scale": 1.0}]
        steps, batch, lr = recipe.align_steps, recipe.align_batch, recipe.align_lr
    elif stage == "llava":
        groups, steps, batch, lr = ([{"params": projector, "scale": 1.0}, {"params": lm, "scale": recipe.lm_lr_scale}],
                                    recipe.llava_steps, recipe.llava_batch, recipe.llava_lr)
        if recipe.tower_lr_scale > 0:
            groups.append({"params": tower, "scale": recipe.tower_lr_scale})
    else:
        raise ValueError(f"train_answers trains 'align' or 'llava', not {stage!r}")
    trained = {id(p) for g in groups for p in g["params"]}
    for p in model.parameters():  # frozen parameters get no gradient at all
        p.requires_grad_(id(p) in trained)
    opt = _optimizer(groups, lr, recipe)
    rng = np.random.default_rng(recipe.seed + (recipe.llava_question_offset if stage == "llava" else 22))
    rngs = {**(streams or {}), "questions": rng}
    start = ck.resume(stage, opt, rngs) if ck else 0
    rows = log.setdefault(f"{stage}_stage", [])
    t0 = time.perf_counter() - 60 * (log.get(f"{stage}_minutes_so_far") or 0)
    model.train()
    bar = progress.bar(range(start, steps), desc=f"stage {stage}", mininterval=5, initial=start, total=steps)
    for step in bar:
        _set_lr(opt, lr, step, steps, recipe)
        images, labels = stream.next(batch)
        qtypes = ask(rng, labels, recipe.question_probs)
        targets = torch.stack([prompts.answer_ids[q][labels[i, q]] for i, q in enumerate(qtypes)])
        if recipe.end_token_loss:
            loss = answer_loss(model, prompts, images, qtypes, targets, recipe.bf16)
        else:
            loss = F.cross_entropy(final_logits(model, prompts, images, qtypes, recipe.bf16), targets)
        if replay is not None and stage == "llava" and recipe.text_replay_batch:
            loss = loss + text_loss(model, replay, recipe.text_replay_batch, recipe.bf16)
        loss.backward()
        torch.nn.utils.clip_grad_norm_([p for g in groups for p in g["params"]], 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if (step + 1) % recipe.eval_every == 0 or step + 1 == steps:
            acc = quick_accuracy(model, prompts, eval_images, eval_labels, recipe.bf16)
            row = {"step": step + 1, "minutes": round((time.perf_counter() - t0) / 60, 2),
                   "loss": round(loss.item(), 4), **acc}
            rows.append(row)
            bar.set_postfix(loss=f"{loss.item():.3f}", **{k: f"{v:.3f}" for k, v in acc.items()})
            progress.write(f"[{stage}] {row}")
        if ck and (step + 1) % ck.every == 0 and step + 1 < steps:
            log[f"{stage}_minutes_so_far"] = (time.perf_counter() - t0) / 60
            ck.save(model, stage, step + 1, opt, rngs, log, ck.finished, recipe)
    for p in model.parameters():
        p.requires_grad_(True)
    log.pop(f"{stage}_minutes_so_far", None)
    log[f"{stage}_minutes"] = round((time.perf_counter() - t0) / 60, 2)


def load_tower(model, source: str, log: dict) -> None:
    """Copy the per-patch vision tower in folder ``source`` (a path, or a name under ``data/models``:
    ``model.safetensors`` holding ``model.vision_tower``'s weights, ``tower_log.json`` its training,
    :mod:`headflow.organism.tower`) into ``model``, and record where it came from in ``log``."""
    folder = Path(source)
    if not folder.is_dir():
        folder = models.MODELS_DIR / source
    weights = folder / "model.safetensors"
    if not weights.exists():
        raise FileNotFoundError(f"no vision tower at {weights}: train it first (make tower)")
    state = {k: v.float() for k, v in load_file(weights).items()}
    model.model.vision_tower.load_state_dict(state)  # strict: a tower of another size is refused here
    tlog_path = folder / "tower_log.json"
    tlog = json.loads(tlog_path.read_text()) if tlog_path.exists() else {}
    log["vision_tower"] = {"folder": source, "sha256": sha256(weights), "minutes": tlog.get("minutes"),
                           "steps": tlog.get("recipe", {}).get("steps"), "final": (tlog.get("rows") or [None])[-1]}


def train(out: Path, recipe: Recipe, tower_dir: Path | None = None) -> dict:
    """Train the organism by ``recipe.stages`` and save model, processor and ``training_log.json`` in
    ``out`` (:mod:`headflow.models.organism_store`: float16, the vision tower in ``tower_dir``,
    default ``<out>/../vision-tower``, shared with the other organisms).  The recipe's scene layout and
    class merge hold while it trains; the ones before are restored after."""
    layout, merge = data.use_layout(recipe.scene_layout), data.use_classes(recipe.class_merge)
    try:
        return _train(out, recipe, tower_dir)
    finally:
        data.use_layout(layout)
        data.use_classes(merge)


def _train(out: Path, recipe: Recipe, tower_dir: Path | None) -> dict:
    torch.manual_seed(recipe.seed)
    torch.set_num_threads(recipe.threads)
    t0 = time.perf_counter()
    processor = build_processor()
    model = build_model(processor, recipe)
    monitor_specs = data.sample_specs("test", recipe.n_eval_during, seed=recipe.monitor_seed, objects=recipe.scene_objects)
    monitor_images, _ = data.render_many(monitor_specs)
    monitor_labels = _labels(monitor_specs)
    prompts = PromptCache(processor, monitor_images[0])
    stream = SceneStream(recipe.seed + 1, recipe.scene_objects, recipe.balanced_items)
    text_check = text_monitor(recipe, processor)
    replay = texttasks.make(recipe.text_task, processor.tokenizer, recipe.seed + 5, recipe)
    log = {"recipe": asdict(recipe), "n_parameters": sum(p.numel() for p in model.parameters()),
           "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                        "python": platform.python_version()},
           "machine": {"processor": platform.processor() or platform.machine(), "threads": recipe.threads},
           "monitor": {"split": "test", "seed": recipe.monitor_seed, "n": recipe.n_eval_during,
                       "checkpoint_selected": False}}
    if any(st in LEGACY_STAGES for st in recipe.stages):
        raise ValueError("the tower is trained on its own now (make tower: headflow.organism.tower); "
                         f"organisms take it frozen; drop {LEGACY_STAGES} from the stages")
    load_tower(model, recipe.tower_from, log)
    ck = Checkpoint(Path(out) / ".checkpoint.pt", recipe)
    streams = {"scenes": stream.rng, "replay": replay.rng}
    if ck.state:  # resume: the model, the log and the streams as they were
        model.load_state_dict(ck.state["model"])
        log = ck.state["log"]
        log.setdefault("resumed", []).append({"stage": ck.state["stage"], "step": ck.state["step"]})
        for name, rng in streams.items():
            rng.bit_generator.state = ck.state["rngs"][name]
        torch.set_rng_state(ck.state["torch_rng"])
        t0 -= 60 * log.get("wall_minutes_so_far", 0)
    after = log.setdefault("text_retrieval_after_stage", {"init": texttasks.accuracy(model, text_check)})
    finished = list(ck.finished)
    for stage in recipe.stages:
        if stage in finished:
            continue
        if stage == "text":
            train_text(model, recipe, processor, log, ck, streams)
        else:
            train_answers(model, recipe, stage, stream, prompts, monitor_images, monitor_labels, log, replay, ck,
                          streams)
        after[stage] = texttasks.accuracy(model, text_check)
        progress.write(f"[text task after {stage}] {after[stage]}")
        finished.append(stage)
        log["wall_minutes_so_far"] = (time.perf_counter() - t0) / 60
        ck.save(model, None, 0, None, streams, log, finished, recipe)
    log.pop("wall_minutes_so_far", None)
    model.eval()
    organism_store.round_trip(model)  # the committed checkpoint is float16: evaluate exactly that
    after["stored"] = texttasks.accuracy(model, text_check)
    eval_specs = data.sample_specs("test", recipe.n_eval_final, seed=recipe.eval_seed, objects=recipe.scene_objects)
    eval_images, _ = data.render_many(eval_specs)
    log["final"] = {"n_eval": recipe.n_eval_final, "split": "test", "seed": recipe.eval_seed,
                    **quick_accuracy(model, prompts, eval_images, _labels(eval_specs), bf16=False)}
    log["wall_minutes"] = round((time.perf_counter() - t0) / 60, 2)
    out.mkdir(parents=True, exist_ok=True)
    organism_store.save(model, processor, out, tower_dir if tower_dir is not None else out.parent / "vision-tower")
    shared = json.loads((out / organism_store.SHARED_FILE).read_text())
    log["stored"] = {"dtype": shared["dtype"], "vision_tower": shared["vision_tower"],
                     "final_evaluated_after_rounding": True}
    (out / "training_log.json").write_text(json.dumps(log, indent=1))
    ck.path.unlink(missing_ok=True)
    print(json.dumps(log["final"]), f"wall {log['wall_minutes']} min")
    return log


# ------------------------------------------------------------------------------------ reporting (chapter 0)
STAGE_TRAINS = {"vision": "vision tower + linear probes", "text": "language model (text only)",
                "align": "projector only", "llava": "projector + language model"}


def stage_table(log: dict) -> dict:
    """``{row label: value}`` describing a training log's stages (for a side-by-side table)."""
    r = log["recipe"]
    stages = list(r.get("stages", ("vision", "llava")))
    out = {}
    if log.get("vision_tower"):
        vt = log["vision_tower"]
        out["vision tower"] = f"per patch, frozen ({vt['folder']}: {vt['steps']} steps, {vt['minutes']} min)"
    elif "vision" not in stages and log.get("vision_inherited_from"):
        out["vision tower"] = f"inherited from {log['vision_inherited_from']['model']}"
    for i, st in enumerate(stages):
        steps, batch = r.get(f"{st}_steps"), r.get(f"{st}_batch")
        out[f"stage {i + 1}"] = (f"{st}: {STAGE_TRAINS[st]}, {steps} steps x {batch}, "
                                 f"{log.get(f'{st}_minutes')} min")
    out["parameters"] = f"{log['n_parameters']:,}"
    out["wall minutes (all stages)"] = log["wall_minutes"]
    mon = log.get("monitor", {"seed": 1000 + r["seed"], "n": r["n_eval_during"]})
    out["monitored on"] = f"test split, seed {mon['seed']}, first {mon['n']} scenes"
    fin = log["final"]
    out["final evaluation"] = f"test split, seed {fin.get('seed', 1000 + r['seed'])}, {fin['n_eval']} scenes"
    return out


def accuracy_table(runs: dict):
    """A DataFrame: per organism and evaluation set, accuracy and 95% interval per question."""

    rows = []
    for name, sets in runs.items():
        for set_name, res in sets.items():
            row = {"organism": name, "set": f"{set_name} (seed {res['seed']}, n={res['n_eval']})"}
            for q in QUESTION_TYPES:
                lo, hi = res["ci"][q]
                row[q] = f"{res['accuracy'][q]:.1%} [{lo:.1%}, {hi:.1%}]"
            rows.append(row)
    return pd.DataFrame(rows).set_index(["organism", "set"])


RECIPE_KEYS = ("seed", "stages", "tower_from", "scene_layout", "scene_objects", "class_merge", "text_task", "text_steps",
               "align_steps", "llava_steps", "llava_lr", "lm_lr_scale", "text_replay_batch")


# what the logs written before these recipe fields existed ran with
_BEFORE = {"stages": ("vision", "llava"), "scene_objects": (1, 1), "text_task": "flat", "lm_lr_scale": 1.0,
           "scene_layout": "overlap", "tower_from": "organism-scratch", "end_token_loss": False,
           "balanced_items": False, "text_replay_batch": 0, "class_merge": None}


def recipe_from_log(log: dict) -> Recipe:
    """The :class:`Recipe` a training log ran with (fields it predates take the values it ran with)."""
    r = dict(log.get("recipe", {}))
    r["tower_from"] = _committed_tower_name(r.get("tower_from"), log.get("vision_tower") or {})
    fields = Recipe.__dataclass_fields__
    return Recipe(**{**{k: v for k, v in _BEFORE.items() if k not in r}, **{k: v for k, v in r.items() if k in fields}})


def _committed_tower_name(source: str | None, record: dict) -> str | None:
    """A tower given by path at training time (``data/models-next/vision-tower``) is the committed tower
    of the same folder name when its weights' sha256 (recorded in the log) is that tower's; else unchanged."""
    if not source or "/" not in source or not record.get("sha256"):
        return source
    weights = models.MODELS_DIR / Path(source).name / "model.safetensors"
    return Path(source).name if weights.exists() and sha256(weights) == record["sha256"] else source


def recipe_summary(log: dict) -> dict:
    """The recipe's defining settings from a training log (older logs: the values they ran with)."""
    r = recipe_from_log(log)
    unused = {"text_steps": "text", "text_task": "text", "text_replay_batch": "text", "align_steps": "align",
              "llava_steps": "llava", "llava_lr": "llava", "lm_lr_scale": "llava"}
    out = {k: list(v) if isinstance(v, tuple) else v for k, v in ((k, getattr(r, k)) for k in RECIPE_KEYS)}
    out = {k: (None if k in unused and unused[k] not in r.stages else v) for k, v in out.items()}
    if "vision" in r.stages:
        out["tower_from"] = None  # it trains its own
    return out


def accuracy_summary(runs: dict, logs: dict, default: str, common: str) -> dict:
    """``book/results/organism.json``: per organism the held-out accuracy on the ``common`` set
    (``accuracy``, ``accuracy_ci``, ``n_eval``), its recipe, and every set it was evaluated on."""
    def compact(res):
        return {k: res[k] for k in ("accuracy", "ci", "n_eval", "seed", "split", "objects")}

    by = {}
    for name, sets in runs.items():
        log = logs.get(name, {})
        obj = sets[common]
        per_class = {c: float(obj["correct"]["object"][obj["labels"]["object"] == i].mean())
                     for i, c in enumerate(data.CLASSES)}
        by[name] = {"sets": {s: compact(r) for s, r in sets.items()}, "per_class_object": per_class,
                    "recipe": recipe_summary(log), "wall_minutes": log.get("wall_minutes"),
                    "training_log_final": log.get("final"), "monitor": log.get("monitor")}
    return {"model": default, "common_set": common, "split": "test",
            "accuracy": {n: b["sets"][common]["accuracy"] for n, b in by.items()},
            "accuracy_ci": {n: b["sets"][common]["ci"] for n, b in by.items()},
            "n_eval": {n: b["sets"][common]["n_eval"] for n, b in by.items()},
            "eval_seed": by[default]["sets"][common]["seed"],
            "recipe": {n: b["recipe"] for n, b in by.items()}, "by_organism": by}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description="Train the model organism (the default: about an hour on 2 cores "
                                             "from the committed vision tower).")
    ap.add_argument("--recipe", default="organism", choices=sorted(RECIPES),
                    help="which committed recipe (organism-scratch: the same tower and scenes, no text pretraining)")
    ap.add_argument("--out", type=Path, default=None, help="default: data/models/<recipe>")
    ap.add_argument("--tower-from", default=Recipe.tower_from)
    for f in Recipe.__dataclass_fields__.values():  # every int/float field of the recipe is an option
        if type(f.default) in (int, float):
            ap.add_argument("--" + f.name.replace("_", "-"), type=type(f.default), default=None)
    ap.add_argument("--scene-layout", default=None, choices=sorted(data.LAYOUTS))
    ap.add_argument("--text-task", default=None, choices=texttasks.TASKS)
    args = vars(ap.parse_args(argv))
    name, out = args.pop("recipe"), args.pop("out")
    overrides = {k: v for k, v in args.items() if v is not None}
    recipe = recipe_of(name, **overrides)
    out = out or Path("data/models") / name
    train(out, recipe)


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    main()
