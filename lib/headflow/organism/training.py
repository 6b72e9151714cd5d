"""The model organism: a small LLaVA trained in this repository.

It is transformers' own ``LlavaForConditionalGeneration`` (CLIP vision tower, MLP projector,
LLaMA language model) with the LLaVA-1.5 chat template ``USER: <image>\\n{question} ASSISTANT:``
and a word-level tokenizer built offline, in which every answer word, "ASSISTANT" and ":" are
single tokens.  Training is a list of stages (``Recipe.stages``), each logged:

``vision``
    the vision tower alone learns the object's class and colour from a linear head on its mean
    patch feature (the layer the projector reads): our stand-in for a pretrained CLIP;
``text``
    the language model alone (no image) learns in-context retrieval over its own vocabulary:
    ``USER: <context words> <question> ASSISTANT:`` -> the context word of the asked type (one
    class, one colour and one position word hidden among filler words, shuffled, a context of
    random length).  It teaches attention heads to find a word of a requested kind anywhere
    earlier in the sequence and move it to the final position: our stand-in for text pretraining;
``align``
    the projector only, language model and tower frozen (LLaVA's stage 1);
``llava``
    projector and language model (tower frozen) answer the three image questions (LLaVA's
    stage 2; the loss is on the one answer token at the final position, teacher forced).

Four recipes are committed (:data:`RECIPES`), all sharing one vision tower (trained for
``organism-scratch``, frozen elsewhere; stored once, :mod:`headflow.models.organism_store`):

``organism`` (the default)
    multi-object scenes (the questions ask about the main object), the ``bound`` text task
    (:mod:`headflow.organism.texttasks`), then ``align``, then ``llava`` with the language model at
    ``lm_lr_scale`` of the projector's rate and ``text_replay_batch`` text examples beside every batch;
``organism-seed2``
    the same recipe with another seed;
``organism-single``
    the first default: single-object scenes, the ``flat`` text task, no protection;
``organism-scratch``
    ``vision`` then ``llava`` on single-object scenes: the language model learns to read from scratch.

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

from headflow.images import fashionscenes as data
from headflow.images.fashionscenes import ANSWER_WORDS
from headflow.models import loading as models
from headflow.models import organism_store
from headflow.models.llava_builder import LlavaArch, build_model, build_processor, to_pixels
from headflow.organism import texttasks
from headflow.task.prompt import QUESTION_TYPES, QUESTIONS, answer_token_ids, build_prompt
from headflow.util.hashing import sha256
from headflow.util import progress

STAGES = ("vision", "text", "align", "llava")


@dataclass
class Recipe(LlavaArch):
    """Architecture (:class:`headflow.models.llava_builder.LlavaArch`) and training schedule of the
    organism (all recorded in the training log).

    The defaults are the default organism; :func:`scratch_recipe` gives ``organism-scratch``."""

    stages: tuple = ("text", "align", "llava")
    tower_from: str = "organism-scratch"  # the pretrained vision tower, when "vision" is not a stage
    scene_objects: tuple = (2, 3)  # items per training and evaluation scene (1, 1): single-object scenes
    text_task: str = "bound"  # "bound" (binding + keyed retrieval) or "flat" (one word per type)
    # vision: the tower with class and colour heads
    vision_steps: int = 4000
    vision_batch: int = 128
    vision_lr: float = 2e-3
    # text: in-context retrieval, language model alone
    text_steps: int = 1200
    text_batch: int = 64
    text_lr: float = 2e-3
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
    lm_lr_scale: float = 0.5  # the language model's rate in the llava stage, relative to the projector's
    text_replay_batch: int = 32  # text-task examples replayed beside every llava batch (0: none)
    llava_question_offset: int = 32  # seed offset of the llava stage's question types (organism-scratch: 2)
    question_probs: tuple = (0.5, 0.25, 0.25)  # object, color, position
    warmup: int = 100
    weight_decay: float = 0.05
    bf16: bool = True
    eval_every: int = 200
    n_eval_during: int = 600
    monitor_seed: int = 2000  # the scenes progress is monitored on (no checkpoint is selected on them)
    eval_seed: int = 1000  # the held-out scenes of the final evaluation, which no training step sees
    n_eval_final: int = 3000
    threads: int = 2

    def __post_init__(self):
        bad = [s for s in self.stages if s not in STAGES]
        if bad or not self.stages:
            raise ValueError(f"unknown training stage(s) {bad}; stages are drawn from {STAGES}")
        if self.text_min_fillers < 0 or self.text_max_fillers < self.text_min_fillers:
            raise ValueError("need 0 <= text_min_fillers <= text_max_fillers")
        if self.text_task not in texttasks.TASKS:
            raise ValueError(f"unknown text task {self.text_task!r}; choose one of {texttasks.TASKS}")
        self.scene_objects = tuple(self.scene_objects)
        self.stages = tuple(self.stages)
        self.question_probs = tuple(self.question_probs)


# the settings of the first default recipe that the new default changed
FIRST_DEFAULT = {"scene_objects": (1, 1), "text_task": "flat", "text_steps": 300, "text_batch": 128, "text_lr": 1.5e-3,
                 "align_steps": 400, "llava_steps": 1000, "lm_lr_scale": 1.0, "text_replay_batch": 0}


def single_recipe(**overrides) -> Recipe:
    """``organism-single``: the first default recipe, on single-object scenes with the flat text task
    and the language model trained at the projector's rate."""
    return Recipe(**{**FIRST_DEFAULT, **overrides})


def scratch_recipe(**overrides) -> Recipe:
    """``organism-scratch``: the tower first, then the whole LLaVA at once, with no text pretraining.
    (Its committed checkpoint monitored training on the first 600 scenes of the final evaluation's
    seed; chapter 0 therefore also evaluates it on a fresh seed.)"""
    return Recipe(**{**FIRST_DEFAULT, "stages": ("vision", "llava"), "monitor_seed": 1000, "llava_steps": 850,
                     "llava_question_offset": 2, **overrides})


SEED2 = 1


def recipe_of(name: str, **overrides) -> Recipe:
    """The committed recipe of organism ``name`` (``RECIPES``)."""
    if name not in RECIPES:
        raise ValueError(f"unknown organism recipe {name!r}; choose one of {sorted(RECIPES)}")
    return RECIPES[name](**overrides)


#: The committed recipes: name -> Recipe factory.
RECIPES = {"organism": Recipe, "organism-seed2": lambda **o: Recipe(**{"seed": SEED2, **o}),
           "organism-single": single_recipe, "organism-scratch": scratch_recipe}


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

    def batch(self, qtypes: list[int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Left-padded ``input_ids``, ``attention_mask`` and ``position_ids``, each ``(B, L)``."""
        L = max(len(self.ids[q]) for q in qtypes)
        ids = torch.full((len(qtypes), L), self.pad_id, dtype=torch.long)
        att = torch.zeros((len(qtypes), L), dtype=torch.long)
        for row, q in enumerate(qtypes):
            n = len(self.ids[q])
            ids[row, L - n:] = self.ids[q]
            att[row, L - n:] = 1
        return ids, att, (att.cumsum(1) - 1).clamp(min=0)


def final_logits(model, prompts: PromptCache, images_u8: np.ndarray, qtypes: list[int], bf16: bool) -> torch.Tensor:
    """Logits ``(B, vocab)`` at the final prompt position."""
    ids, att, pos = prompts.batch(qtypes)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        out = model(input_ids=ids, attention_mask=att, position_ids=pos, pixel_values=to_pixels(images_u8),
                    logits_to_keep=1)
    return out.logits[:, -1].float()


@torch.inference_mode()
def quick_accuracy(model, prompts: PromptCache, images, labels, bf16: bool, batch: int = 250) -> dict:
    """Unrestricted-argmax accuracy per question type; ``labels`` is ``(N, 3)`` (class, colour, position)."""
    was_training = model.training
    model.eval()
    acc = {}
    for q, name in enumerate(QUESTION_TYPES):
        correct = 0
        for s in range(0, len(images), batch):
            logits = final_logits(model, prompts, images[s:s + batch], [q] * len(images[s:s + batch]), bf16)
            target = prompts.answer_ids[q][torch.from_numpy(labels[s:s + batch, q])]
            correct += int((logits.argmax(-1) == target).sum())
        acc[name] = correct / len(images)
    model.train(was_training)
    return acc


# ------------------------------------------------------------------------------------ training
def _lr_factor(step: int, total: int, warmup: int) -> float:
    """Linear warm-up, then cosine decay to 10%."""
    return min(1.0, (step + 1) / warmup) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * step / total)))


def _labels(specs) -> np.ndarray:
    return np.array([(s.label, s.color, s.position) for s in specs], np.int64)


class SceneStream:
    """Endless, seeded batches of freshly rendered training scenes (Fashion-MNIST train split)."""

    def __init__(self, seed: int, objects=(1, 1)):
        self.rng = np.random.default_rng(seed)
        self.n_items = len(data.load_fashion_mnist("train")[1])
        self.objects = tuple(objects)

    def next(self, n: int):
        items = self.rng.integers(0, self.n_items, n)
        specs = data.sample_specs("train", n, int(self.rng.integers(2**31)), items=items, objects=self.objects)
        images, _ = data.render_many(specs)
        return images, _labels(specs)


def train_vision(model, recipe: Recipe, stream: SceneStream, probe_images, probe_labels, log: dict) -> None:
    """Stage ``vision``: the tower with linear class and colour heads on its mean patch feature."""
    tower = model.model.vision_tower
    heads = torch.nn.ModuleDict({"class": torch.nn.Linear(recipe.vision_hidden, len(data.CLASSES)),
                                 "color": torch.nn.Linear(recipe.vision_hidden, len(data.COLORS))})
    params = list(tower.parameters()) + list(heads.parameters())
    opt = torch.optim.AdamW(params, lr=recipe.vision_lr, betas=(0.9, 0.98), weight_decay=recipe.weight_decay)

    def features(images_u8):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=recipe.bf16):
            hidden = tower(to_pixels(images_u8), output_hidden_states=True).hidden_states[-1][:, 1:]
            return hidden.mean(1)

    t0 = time.perf_counter()
    bar = progress.bar(range(recipe.vision_steps), desc="stage vision: tower", mininterval=5)
    for step in bar:
        for g in opt.param_groups:
            g["lr"] = recipe.vision_lr * _lr_factor(step, recipe.vision_steps, recipe.warmup)
        images, labels = stream.next(recipe.vision_batch)
        f = features(images)
        y = torch.from_numpy(labels)
        loss = F.cross_entropy(heads["class"](f).float(), y[:, 0]) + F.cross_entropy(heads["color"](f).float(), y[:, 1])
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if (step + 1) % recipe.eval_every == 0 or step + 1 == recipe.vision_steps:
            with torch.inference_mode():
                f = torch.cat([features(probe_images[s:s + 500]) for s in range(0, len(probe_images), 500)])
                acc_c = float((heads["class"](f).argmax(-1).numpy() == probe_labels[:, 0]).mean())
                acc_k = float((heads["color"](f).argmax(-1).numpy() == probe_labels[:, 1]).mean())
            row = {"step": step + 1, "minutes": round((time.perf_counter() - t0) / 60, 2),
                   "loss": round(loss.item(), 4), "probe_object": acc_c, "probe_color": acc_k}
            log.setdefault("vision_stage", []).append(row)
            bar.set_postfix(loss=f"{loss.item():.3f}", probe_object=f"{acc_c:.3f}")
            progress.write(f"[vision] {row}")
    log["vision_minutes"] = round((time.perf_counter() - t0) / 60, 2)


def _optimizer(groups: list[dict], lr: float, recipe: Recipe):
    return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.98), weight_decay=recipe.weight_decay)


def _set_lr(opt, lr: float, step: int, total: int, recipe: Recipe) -> None:
    for g in opt.param_groups:
        g["lr"] = lr * g.get("scale", 1.0) * _lr_factor(step, total, recipe.warmup)


def text_monitor(recipe: Recipe, processor, n: int = 600):
    """The fixed text-task batch that text accuracy is measured on after every stage."""
    return texttasks.make(recipe.text_task, processor.tokenizer, recipe.seed + 4, recipe).batch(n)


def text_loss(model, task, n: int, bf16: bool) -> torch.Tensor:
    ids, att, pos, y, _ = task.batch(n)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        logits = model(input_ids=ids, attention_mask=att, position_ids=pos, logits_to_keep=1).logits[:, -1]
    return F.cross_entropy(logits.float(), y)


def train_text(model, recipe: Recipe, processor, log: dict) -> None:
    """Stage ``text``: the language model alone learns the text task (no image, no projector)."""
    task = texttasks.make(recipe.text_task, processor.tokenizer, recipe.seed + 3, recipe)
    task.check()
    monitor = text_monitor(recipe, processor, 512)
    params = list(model.model.language_model.parameters()) + list(model.lm_head.parameters())
    opt = _optimizer(params, recipe.text_lr, recipe)
    rows, t0 = log.setdefault("text_stage", []), time.perf_counter()
    model.train()
    bar = progress.bar(range(recipe.text_steps), desc=f"stage text: {recipe.text_task} retrieval", mininterval=5)
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
    log["text_minutes"] = round((time.perf_counter() - t0) / 60, 2)


def train_answers(model, recipe: Recipe, stage: str, stream: SceneStream, prompts: PromptCache, eval_images,
                  eval_labels, log: dict, replay=None) -> None:
    """Stage ``align`` (projector only) or ``llava`` (projector + language model): answer the three
    question types, loss on the one answer token.  The vision tower is frozen unless
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
    rows, t0 = log.setdefault(f"{stage}_stage", []), time.perf_counter()
    model.train()
    bar = progress.bar(range(steps), desc=f"stage {stage}", mininterval=5)
    for step in bar:
        _set_lr(opt, lr, step, steps, recipe)
        images, labels = stream.next(batch)
        qtypes = rng.choice(3, batch, p=list(recipe.question_probs)).tolist()
        targets = torch.stack([prompts.answer_ids[q][labels[i, q]] for i, q in enumerate(qtypes)])
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
    for p in model.parameters():
        p.requires_grad_(True)
    log[f"{stage}_minutes"] = round((time.perf_counter() - t0) / 60, 2)


def load_tower(model, source: str, log: dict) -> None:
    """Copy a committed organism's vision tower into ``model`` (the shared "pretrained encoder"),
    and its ``vision`` stage log, marked as inherited."""

    folder = Path(models.resolve_path(source))
    src, _ = models.load(str(folder))
    model.model.vision_tower.load_state_dict(src.model.vision_tower.state_dict())
    src_log_path = folder / "training_log.json"
    src_log = json.loads(src_log_path.read_text()) if src_log_path.exists() else {}
    log["vision_stage"] = src_log.get("vision_stage", [])
    log["vision_minutes"] = src_log.get("vision_minutes")
    log["vision_inherited_from"] = {"model": source, "sha256": sha256(folder / "model.safetensors")}


def train(out: Path, recipe: Recipe, tower_dir: Path | None = None) -> dict:
    """Train the organism by ``recipe.stages`` and save model, processor and ``training_log.json`` in
    ``out`` (:mod:`headflow.models.organism_store`: float16, the vision tower in ``tower_dir``,
    default ``<out>/../vision-tower``, shared with the other organisms)."""

    torch.manual_seed(recipe.seed)
    torch.set_num_threads(recipe.threads)
    t0 = time.perf_counter()
    processor = build_processor()
    model = build_model(processor, recipe)
    monitor_specs = data.sample_specs("test", recipe.n_eval_during, seed=recipe.monitor_seed, objects=recipe.scene_objects)
    monitor_images, _ = data.render_many(monitor_specs)
    monitor_labels = _labels(monitor_specs)
    prompts = PromptCache(processor, monitor_images[0])
    stream = SceneStream(recipe.seed + 1, recipe.scene_objects)
    text_check = text_monitor(recipe, processor)
    replay = texttasks.make(recipe.text_task, processor.tokenizer, recipe.seed + 5, recipe)
    log = {"recipe": asdict(recipe), "n_parameters": sum(p.numel() for p in model.parameters()),
           "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                        "python": platform.python_version()},
           "machine": {"processor": platform.processor() or platform.machine(), "threads": recipe.threads},
           "monitor": {"split": "test", "seed": recipe.monitor_seed, "n": recipe.n_eval_during,
                       "checkpoint_selected": False}}
    if "vision" not in recipe.stages:
        load_tower(model, recipe.tower_from, log)
    after = log.setdefault("text_retrieval_after_stage", {"init": texttasks.accuracy(model, text_check)})
    for stage in recipe.stages:
        if stage == "vision":
            train_vision(model, recipe, stream, monitor_images, monitor_labels, log)
        elif stage == "text":
            train_text(model, recipe, processor, log)
        else:
            train_answers(model, recipe, stage, stream, prompts, monitor_images, monitor_labels, log, replay)
        after[stage] = texttasks.accuracy(model, text_check)
        progress.write(f"[text task after {stage}] {after[stage]}")
    model.eval()
    organism_store.round_trip(model)  # the committed checkpoint is float16: evaluate exactly that
    after["stored"] = texttasks.accuracy(model, text_check)
    eval_specs = data.sample_specs("test", recipe.n_eval_final, seed=recipe.eval_seed, objects=recipe.scene_objects)
    eval_images, _ = data.render_many(eval_specs)
    log["final"] = {"n_eval": recipe.n_eval_final, "split": "test", "seed": recipe.eval_seed,
                    **quick_accuracy(model, prompts, eval_images, _labels(eval_specs), bf16=False)}
    log["wall_minutes"] = round((time.perf_counter() - t0) / 60, 2)
    out.mkdir(parents=True, exist_ok=True)
    organism_store.save(model, processor, out, tower_dir if tower_dir is not None else out.parent / "vision-tower",
                        replace_tower="vision" in recipe.stages)
    shared = json.loads((out / organism_store.SHARED_FILE).read_text())
    log["stored"] = {"dtype": shared["dtype"], "vision_tower": shared["vision_tower"],
                     "final_evaluated_after_rounding": True}
    (out / "training_log.json").write_text(json.dumps(log, indent=1))
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
    if "vision" not in stages and log.get("vision_inherited_from"):
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


RECIPE_KEYS = ("seed", "stages", "tower_from", "scene_objects", "text_task", "text_steps", "align_steps", "llava_steps",
               "llava_lr", "lm_lr_scale", "text_replay_batch")


# what the logs written before these recipe fields existed ran with
_BEFORE = {"stages": ("vision", "llava"), "scene_objects": (1, 1), "text_task": "flat", "lm_lr_scale": 1.0,
           "text_replay_batch": 0}


def recipe_from_log(log: dict) -> Recipe:
    """The :class:`Recipe` a training log ran with (fields it predates take the values it ran with)."""
    r = log.get("recipe", {})
    fields = Recipe.__dataclass_fields__
    return Recipe(**{**{k: v for k, v in _BEFORE.items() if k not in r}, **{k: v for k, v in r.items() if k in fields}})


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
                    help="which committed recipe (organism-scratch: vision tower, then the whole LLaVA, no text "
                         "pretraining; organism-single: single-object scenes, flat text task)")
    ap.add_argument("--out", type=Path, default=None, help="default: data/models/<recipe>")
    ap.add_argument("--tower-from", default=Recipe.tower_from)
    for f in Recipe.__dataclass_fields__.values():  # every int/float field of the recipe is an option
        if type(f.default) in (int, float):
            ap.add_argument("--" + f.name.replace("_", "-"), type=type(f.default), default=None)
    args = vars(ap.parse_args(argv))
    name, out = args.pop("recipe"), args.pop("out")
    overrides = {k: v for k, v in args.items() if v is not None}
    recipe = recipe_of(name, **overrides)
    out = out or Path("data/models") / name
    train(out, recipe)


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    main()
