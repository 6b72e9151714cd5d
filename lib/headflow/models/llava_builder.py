"""The small LLaVA that the organism and the tiny models share: transformers' own
``LlavaForConditionalGeneration`` (CLIP vision tower, MLP projector, LLaMA language model) with
the LLaVA-1.5 chat template ``USER: <image>\\n{question} ASSISTANT:``, a word-level tokenizer built
offline (every FashionScenes answer word, "ASSISTANT" and ":" are single tokens) and a CLIP-style
processor for 64x64 images (patch 8: 64 image tokens).  Training lives in
:mod:`headflow.organism.training`.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from tokenizers import Regex, Tokenizer, pre_tokenizers, processors, trainers
from tokenizers import models as tokenizer_models
from transformers import (
    CLIPVisionConfig,
    LlamaConfig,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaProcessor,
    PreTrainedTokenizerFast,
)

from headflow.images import fashionscenes as data
from headflow.images.fashionscenes import ANSWER_WORDS
from headflow.task.prompt import QUESTIONS

try:  # transformers 5.x without torchvision
    from transformers import CLIPImageProcessorPil as ImageProcessor
except ImportError:  # pragma: no cover - 4.x
    from transformers import CLIPImageProcessor as ImageProcessor

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


@dataclass
class LlavaArch:
    """The size of a small LLaVA (and the seed of its initialisation)."""

    seed: int = 0
    vision_hidden: int = 192
    vision_layers: int = 4
    vision_heads: int = 4
    vision_mlp_ratio: int = 2
    text_hidden: int = 256
    text_intermediate: int = 688
    text_layers: int = 8
    text_heads: int = 8


def to_pixels(images_u8) -> torch.Tensor:
    """``(B, H, W, 3) uint8`` numpy -> normalised ``(B, 3, H, W) float32`` on the CPU: what the
    processor computes for 64x64 images (training and the tower probes skip the processor)."""
    x = torch.from_numpy(np.ascontiguousarray(images_u8)).permute(0, 3, 1, 2).float() / 255.0
    mean = torch.tensor(IMAGE_MEAN, device="cpu").view(1, 3, 1, 1)
    std = torch.tensor(IMAGE_STD, device="cpu").view(1, 3, 1, 1)
    return (x - mean) / std


def build_tokenizer():
    """Word-level tokenizer: words split on white space, and ':?.,' split off as tokens."""
    corpus = list(QUESTIONS.values()) + ["USER: ASSISTANT: " + " ".join(sum(ANSWER_WORDS.values(), []))]
    tok = Tokenizer(tokenizer_models.WordLevel(unk_token="<unk>"))
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
    size = data.CANVAS
    ip = ImageProcessor(size={"shortest_edge": size}, crop_size={"height": size, "width": size},
                        do_center_crop=True, do_resize=True, do_normalize=True,
                        image_mean=IMAGE_MEAN, image_std=IMAGE_STD)
    return LlavaProcessor(image_processor=ip, tokenizer=tokenizer or build_tokenizer(), patch_size=PATCH,
                          vision_feature_select_strategy="default", num_additional_image_tokens=1,
                          chat_template=CHAT_TEMPLATE)


def build_model(processor, recipe: LlavaArch):
    """A freshly initialised LlavaForConditionalGeneration of the recipe's size."""
    tok = processor.tokenizer
    vision = CLIPVisionConfig(hidden_size=recipe.vision_hidden,
                              intermediate_size=recipe.vision_mlp_ratio * recipe.vision_hidden,
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
