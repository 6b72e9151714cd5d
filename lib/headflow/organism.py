"""The model organism: a small LLaVA trained from scratch in this repository.

It is transformers' own ``LlavaForConditionalGeneration`` (CLIP vision tower, MLP projector,
LLaMA language model) with the LLaVA-1.5 chat template ``USER: <image>\\n{question} ASSISTANT:``
and a word-level tokenizer built offline, in which every answer word, "ASSISTANT" and ":" are
single tokens.  Training has two stages, as LLaVA starts from a pretrained CLIP:

1. the vision tower alone learns the object's class and colour from a linear head on its mean
   patch feature (the layer the projector reads);
2. the whole model learns to answer the three question types (cross-entropy on the one answer
   token at the final position, teacher forced).

Run it with ``python -m headflow.organism --out data/models/organism`` (``make organism``).
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
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from . import data
from .task import QUESTION_TYPES, QUESTIONS, answer_token_ids, build_prompt

SPECIAL_TOKENS = ["<unk>", "<pad>", "<s>", "</s>", "<image>"]
IMAGE_MEAN = [0.48145466, 0.4578275, 0.40821073]
IMAGE_STD = [0.26862954, 0.26130258, 0.27577711]
PATCH = 8
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'user' %}USER: {% else %}ASSISTANT: {% endif %}"
    "{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}<image>\n{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}"
    "{% if message['role'] == 'assistant' %}</s>{% endif %} "
    "{% endfor %}"
    "{% if add_generation_prompt %}ASSISTANT:{% endif %}"
)
ANSWER_WORDS = {"object": data.CLASSES, "color": data.COLOR_NAMES, "position": data.POSITIONS}


@dataclass
class Recipe:
    """Architecture and training schedule of the organism (all recorded in the training log)."""

    seed: int = 0
    vision_hidden: int = 192
    vision_layers: int = 4
    vision_heads: int = 4
    vision_mlp_ratio: int = 2
    text_hidden: int = 256
    text_intermediate: int = 688
    text_layers: int = 8
    text_heads: int = 8
    # stage 1: vision tower with class and colour heads
    vision_steps: int = 4000
    vision_batch: int = 128
    vision_lr: float = 2e-3
    # stage 2: the whole LLaVA
    llava_steps: int = 850
    llava_batch: int = 64
    llava_lr: float = 1.5e-3
    tower_lr_scale: float = 0.0  # the pretrained tower moves slower in stage 2 (0: frozen)
    question_probs: tuple = (0.5, 0.25, 0.25)  # object, color, position
    warmup: int = 100
    weight_decay: float = 0.05
    bf16: bool = True
    eval_every: int = 200
    n_eval_during: int = 600
    n_eval_final: int = 3000
    threads: int = 2


# ------------------------------------------------------------------------------------ building
def build_tokenizer():
    """Word-level tokenizer: words split on white space, and ':?.,' split off as tokens."""
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    corpus = list(QUESTIONS.values()) + ["USER: ASSISTANT: " + " ".join(sum(ANSWER_WORDS.values(), []))]
    tok = Tokenizer(models.WordLevel(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.WhitespaceSplit(),
        pre_tokenizers.Split(Regex(r"[:?.,]"), behavior="isolated"),
    ])
    tok.train_from_iterator(corpus, trainer=trainers.WordLevelTrainer(special_tokens=SPECIAL_TOKENS))
    bos = tok.token_to_id("<s>")
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B",
                                                       special_tokens=[("<s>", bos)])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="<pad>",
        extra_special_tokens={"image_token": "<image>"}, padding_side="left",
        model_input_names=["input_ids", "attention_mask"])


def build_processor(tokenizer=None):
    """LlavaProcessor: CLIP-style image processing of 64x64 images, patch 8 -> 64 image tokens."""
    from transformers import LlavaProcessor

    try:  # transformers 5.x without torchvision
        from transformers import CLIPImageProcessorPil as ImageProcessor
    except ImportError:  # pragma: no cover - 4.x
        from transformers import CLIPImageProcessor as ImageProcessor
    size = data.CANVAS
    ip = ImageProcessor(size={"shortest_edge": size}, crop_size={"height": size, "width": size},
                        do_center_crop=True, do_resize=True, do_normalize=True,
                        image_mean=IMAGE_MEAN, image_std=IMAGE_STD)
    return LlavaProcessor(image_processor=ip, tokenizer=tokenizer or build_tokenizer(), patch_size=PATCH,
                          vision_feature_select_strategy="default", num_additional_image_tokens=1,
                          chat_template=CHAT_TEMPLATE)


def build_model(processor, recipe: Recipe):
    """A freshly initialised LlavaForConditionalGeneration of the recipe's size."""
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

    tok = processor.tokenizer
    vision = CLIPVisionConfig(hidden_size=recipe.vision_hidden, intermediate_size=recipe.vision_mlp_ratio * recipe.vision_hidden,
                              num_hidden_layers=recipe.vision_layers, num_attention_heads=recipe.vision_heads,
                              image_size=data.CANVAS, patch_size=PATCH, projection_dim=recipe.vision_hidden)
    text = LlamaConfig(vocab_size=len(tok), hidden_size=recipe.text_hidden,
                       intermediate_size=recipe.text_intermediate, num_hidden_layers=recipe.text_layers,
                       num_attention_heads=recipe.text_heads, num_key_value_heads=recipe.text_heads,
                       max_position_embeddings=256, bos_token_id=tok.bos_token_id,
                       eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, tie_word_embeddings=False)
    cfg = LlavaConfig(vision_config=vision, text_config=text, image_token_id=tok.convert_tokens_to_ids("<image>"),
                      vision_feature_layer=-1, vision_feature_select_strategy="default",
                      projector_hidden_act="gelu")
    torch.manual_seed(recipe.seed)
    model = LlavaForConditionalGeneration._from_config(cfg, attn_implementation="sdpa")
    model.generation_config.max_new_tokens = 4
    model.generation_config.do_sample = False
    model.generation_config.pad_token_id = tok.pad_token_id
    return model


# ------------------------------------------------------------------------------------ fast batches
_MEAN = torch.tensor(IMAGE_MEAN).view(1, 3, 1, 1)
_STD = torch.tensor(IMAGE_STD).view(1, 3, 1, 1)


def to_pixels(images_u8: np.ndarray) -> torch.Tensor:
    """``(B, H, W, 3) uint8`` -> normalised ``(B, 3, H, W) float32`` (what the processor computes)."""
    x = torch.from_numpy(np.ascontiguousarray(images_u8)).permute(0, 3, 1, 2).float() / 255.0
    return (x - _MEAN) / _STD


class PromptCache:
    """Token ids of each question's prompt, built once with the real processor and chat template,
    so training batches skip the processor.  Checks the fast pixel path against the processor."""

    def __init__(self, processor, sample_image: np.ndarray):
        from PIL import Image

        self.ids = []
        for q in QUESTION_TYPES:
            enc = processor(images=Image.fromarray(sample_image), text=build_prompt(processor, QUESTIONS[q]),
                            return_tensors="pt")
            self.ids.append(enc["input_ids"][0])
            diff = (to_pixels(sample_image[None]) - enc["pixel_values"]).abs().max().item()
            if diff > 1e-4:
                raise RuntimeError(f"fast pixel normalisation differs from the processor by {diff:.2e}")
        self.pad_id = processor.tokenizer.pad_token_id
        self.answer_ids = [torch.tensor(answer_token_ids(processor, ANSWER_WORDS[q], single_token=True)) for q in QUESTION_TYPES]

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

    def __init__(self, seed: int):
        self.rng = np.random.default_rng(seed)
        self.n_items = len(data.load_fashion_mnist("train")[1])

    def next(self, n: int):
        items = self.rng.integers(0, self.n_items, n)
        specs = data.sample_specs("train", n, int(self.rng.integers(2**31)), items=items)
        images, _ = data.render_many(specs)
        return images, _labels(specs)


def train_vision(model, recipe: Recipe, stream: SceneStream, probe_images, probe_labels, log: dict) -> None:
    """Stage 1: the vision tower with linear class and colour heads on its mean patch feature."""
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
    bar = tqdm(range(recipe.vision_steps), desc="stage 1: vision tower", mininterval=5)
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
            log["vision_stage"].append(row)
            bar.set_postfix(loss=f"{loss.item():.3f}", probe_object=f"{acc_c:.3f}")
            tqdm.write(f"[vision] {row}")
    log["vision_minutes"] = round((time.perf_counter() - t0) / 60, 2)


def train_llava(model, recipe: Recipe, stream: SceneStream, prompts: PromptCache, eval_images, eval_labels,
                log: dict) -> None:
    """Stage 2: the whole model answers the three question types (loss on the one answer token)."""
    tower_params = list(model.model.vision_tower.parameters())
    tower = set(id(p) for p in tower_params)
    rest = [p for p in model.parameters() if id(p) not in tower]
    groups = [{"params": rest, "scale": 1.0}]
    if recipe.tower_lr_scale > 0:
        groups.append({"params": tower_params, "scale": recipe.tower_lr_scale})
    else:  # frozen: no gradient through the tower at all
        for p in tower_params:
            p.requires_grad_(False)
    opt = torch.optim.AdamW(groups, lr=recipe.llava_lr, betas=(0.9, 0.98), weight_decay=recipe.weight_decay)
    rng = np.random.default_rng(recipe.seed + 2)
    t0 = time.perf_counter()
    model.train()
    bar = tqdm(range(recipe.llava_steps), desc="stage 2: LLaVA", mininterval=5)
    for step in bar:
        for g in opt.param_groups:
            g["lr"] = recipe.llava_lr * g["scale"] * _lr_factor(step, recipe.llava_steps, recipe.warmup)
        images, labels = stream.next(recipe.llava_batch)
        qtypes = rng.choice(3, recipe.llava_batch, p=list(recipe.question_probs)).tolist()
        targets = torch.stack([prompts.answer_ids[q][labels[i, q]] for i, q in enumerate(qtypes)])
        loss = F.cross_entropy(final_logits(model, prompts, images, qtypes, recipe.bf16), targets)
        loss.backward()
        torch.nn.utils.clip_grad_norm_([p for g in groups for p in g["params"]], 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if (step + 1) % recipe.eval_every == 0 or step + 1 == recipe.llava_steps:
            acc = quick_accuracy(model, prompts, eval_images, eval_labels, recipe.bf16)
            row = {"step": step + 1, "minutes": round((time.perf_counter() - t0) / 60, 2),
                   "loss": round(loss.item(), 4), **acc}
            log["llava_stage"].append(row)
            bar.set_postfix(loss=f"{loss.item():.3f}", **{k: f"{v:.3f}" for k, v in acc.items()})
            tqdm.write(f"[llava] {row}")
    log["llava_minutes"] = round((time.perf_counter() - t0) / 60, 2)


def train(out: Path, recipe: Recipe) -> dict:
    """Train the organism from scratch and save model, processor and ``training_log.json`` in ``out``."""
    import transformers

    torch.manual_seed(recipe.seed)
    torch.set_num_threads(recipe.threads)
    t0 = time.perf_counter()
    processor = build_processor()
    model = build_model(processor, recipe)
    eval_specs = data.sample_specs("test", recipe.n_eval_final, seed=recipe.seed + 1000)
    eval_images, _ = data.render_many(eval_specs)
    eval_labels = _labels(eval_specs)
    prompts = PromptCache(processor, eval_images[0])
    stream = SceneStream(recipe.seed + 1)
    log = {"recipe": asdict(recipe), "vision_stage": [], "llava_stage": [],
           "n_parameters": sum(p.numel() for p in model.parameters()),
           "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                        "python": platform.python_version()},
           "machine": {"processor": platform.processor() or platform.machine(), "threads": recipe.threads}}
    n_during = recipe.n_eval_during
    train_vision(model, recipe, stream, eval_images[:n_during], eval_labels[:n_during], log)
    train_llava(model, recipe, stream, prompts, eval_images[:n_during], eval_labels[:n_during], log)
    model.eval()
    log["final"] = {"n_eval": recipe.n_eval_final, "split": "test",
                    **quick_accuracy(model, prompts, eval_images, eval_labels, bf16=False)}
    log["wall_minutes"] = round((time.perf_counter() - t0) / 60, 2)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    (out / "training_log.json").write_text(json.dumps(log, indent=1))
    print(json.dumps(log["final"]), f"wall {log['wall_minutes']} min")
    return log


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description="Train the model organism from scratch (about 55 min on 2 cores).")
    ap.add_argument("--out", type=Path, default=Path("data/models/organism"))
    for f in Recipe.__dataclass_fields__.values():  # every int/float field of the recipe is an option
        if type(f.default) in (int, float):
            ap.add_argument("--" + f.name.replace("_", "-"), type=type(f.default), default=f.default)
    args = vars(ap.parse_args(argv))
    out = args.pop("out")
    train(out, Recipe(**args))


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    main()
