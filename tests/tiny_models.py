"""Tiny random-weight models of other families, built from config with offline processors
(no weights can be downloaded here).  They test mechanics, never findings."""
import torch
import transformers as T
from tokenizers import Regex, Tokenizer, models, pre_tokenizers, trainers

from headflow.task import QUESTIONS

QWEN_SPECIALS = ["<unk>", "<pad>", "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>",
                 "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"]
QWEN_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% else %}{{ part['text'] }}{% endif %}{% endfor %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


class ImageOnlyQwen2VLProcessor(T.Qwen2VLProcessor):
    """Qwen2VLProcessor without a video processor (that one needs torchvision, absent here)."""

    def check_argument_for_proper_class(self, argument_name, argument):
        if argument_name == "video_processor" and argument is None:
            return None
        return super().check_argument_for_proper_class(argument_name, argument)


def qwen_tokenizer():
    tok = Tokenizer(models.WordLevel(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(),
                                                 pre_tokenizers.Split(Regex(r"[:?.,]"), behavior="isolated")])
    words = " ".join(QUESTIONS.values()) + " system user assistant bag boot red blue left right"
    tok.train_from_iterator([words], trainer=trainers.WordLevelTrainer(special_tokens=QWEN_SPECIALS))
    return T.PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", pad_token="<pad>",
                                     eos_token="<|im_end|>", padding_side="left",
                                     extra_special_tokens={"image_token": "<|image_pad|>",
                                                           "video_token": "<|video_pad|>",
                                                           "vision_bos_token": "<|vision_start|>",
                                                           "vision_eos_token": "<|vision_end|>"},
                                     model_input_names=["input_ids", "attention_mask"])


def tiny_qwen2_vl(n_layers=3, heads=8, kv_heads=2, seed=0):
    """Qwen2-VL: grouped-query attention (8 query heads over 2 kv heads) and M-RoPE.
    A 64x64 image with patch 8 and 2x2 merging gives 16 image tokens."""
    tok = qwen_tokenizer()
    ip = T.Qwen2VLImageProcessorPil(min_pixels=64 * 64, max_pixels=64 * 64, patch_size=8, merge_size=2,
                                    temporal_patch_size=2)
    proc = ImageOnlyQwen2VLProcessor(image_processor=ip, tokenizer=tok, video_processor=None, chat_template=QWEN_TEMPLATE)
    txt = dict(vocab_size=len(tok), hidden_size=128,  # head_dim 16: mrope_section sums to 8
               intermediate_size=256, num_hidden_layers=n_layers, num_attention_heads=heads,
               num_key_value_heads=kv_heads, max_position_embeddings=1024, pad_token_id=tok.pad_token_id,
               bos_token_id=None, eos_token_id=tok.eos_token_id,
               rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]})
    vis = dict(depth=1, embed_dim=32, hidden_size=128, num_heads=2, patch_size=8, spatial_merge_size=2,
               temporal_patch_size=2, mlp_ratio=2)
    ids = tok.convert_tokens_to_ids
    cfg = T.Qwen2VLConfig(vision_config=vis, text_config=txt, image_token_id=ids("<|image_pad|>"),
                          video_token_id=ids("<|video_pad|>"), vision_start_token_id=ids("<|vision_start|>"),
                          vision_end_token_id=ids("<|vision_end|>"))
    torch.manual_seed(seed)
    model = T.Qwen2VLForConditionalGeneration._from_config(cfg, attn_implementation="sdpa").eval()
    return model, proc


def qwen_inputs(processor, images, question):
    from headflow.task import build_prompt

    prompt = build_prompt(processor, question)
    return processor(images=images, text=[prompt] * len(images), return_tensors="pt", padding=True)
