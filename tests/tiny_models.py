"""The tiny family models of :mod:`headflow.tiny`, as the older tests name them."""
from headflow.models import tiny


def tiny_qwen2_vl():
    """Qwen2-VL: grouped-query attention (8 query heads over 2 kv heads) and M-RoPE; a 64x64 image
    gives 16 image tokens."""
    return tiny.build("qwen2_vl")
