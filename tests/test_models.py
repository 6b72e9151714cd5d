import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from headflow.models import loading as models


def test_load_organism(organism_model):
    model, processor = organism_model
    assert type(model).__name__ == "LlavaForConditionalGeneration"
    assert models.n_heads(model) == (8, 8)
    assert not model.training
    assert processor.chat_template is not None


def test_load_local_folder_round_trip(tiny_llava, tmp_path):
    model, processor = tiny_llava
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    m2, p2 = models.load(str(tmp_path))
    x = processor(images=[torch.zeros(64, 64, 3, dtype=torch.uint8).numpy()], text="USER: <image>\nWhere is it? ASSISTANT:",
                  return_tensors="pt")
    with torch.inference_mode():
        assert torch.allclose(model(**x).logits, m2(**x).logits, atol=1e-5)


def test_hub_id_offline_fails_fast_with_a_message():
    with pytest.raises(ValueError, match="not in the local Hugging Face cache.*huggingface-cli download"):
        models.load("llava-hf/llava-1.5-7b-hf")


def test_unknown_family(tmp_path):
    LlamaForCausalLM(LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                 num_attention_heads=2)).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="unknown model family 'llama'"):
        models.load(str(tmp_path))


def test_missing_folder():
    with pytest.raises(FileNotFoundError, match="does not exist"):
        models.load("./no/such/model")


def test_both_organisms_load_by_name():
    for name in models.ORGANISMS:
        assert models.resolve_path(name) == str(models.ORGANISMS[name])
    scratch, _ = models.load("organism-scratch")
    assert models.n_heads(scratch) == (8, 8)


def test_missing_organism_names_the_make_target(monkeypatch, tmp_path):
    monkeypatch.setitem(models.ORGANISMS, "organism-scratch", tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="make organism-scratch"):
        models.resolve_path("organism-scratch")
