"""The weights of a Llama/Qwen2-family decoder, taken from a transformers model.

Loading goes through transformers (`from_pretrained` or `from_config`), so a local
folder, a Hub id and random weights all arrive the same way; here the per-layer
projections are fused (q/k/v into one matrix, gate/up into one) so a decode step
makes 4 matmuls per layer instead of 7.
"""

from __future__ import annotations

from dataclasses import dataclass

SUPPORTED = ("llama", "qwen2", "mistral")
# rotary variants whose cos/sin depend on the position only: the engine takes them from the
# model's own rotary_emb over all positions once. "dynamic" and "longrope" rescale with the
# sequence's length (transformers recomputes them per forward), so one table would be wrong.
STATIC_ROPE_TYPES = ("default", "linear", "llama3", "yarn")


@dataclass
class LayerWeights:
    input_norm: "torch.Tensor"
    qkv: "torch.Tensor"            # [(Hq + 2 Hkv) * D, hidden]
    qkv_bias: "torch.Tensor | None"
    o: "torch.Tensor"              # [hidden, Hq * D]
    post_norm: "torch.Tensor"
    gate_up: "torch.Tensor"        # [2 * intermediate, hidden]
    down: "torch.Tensor"           # [hidden, intermediate]


@dataclass
class DecoderWeights:
    embed: "torch.Tensor"          # [vocab, hidden]
    lm_head: "torch.Tensor"        # [vocab, hidden] (the same tensor when tied)
    final_norm: "torch.Tensor"
    layers: list[LayerWeights]
    n_heads: int
    n_kv_heads: int
    head_dim: int
    eps: float
    vocab_size: int

    @property
    def n_layers(self) -> int:
        return len(self.layers)

    def nbytes(self) -> int:
        """Bytes a decode step reads from weights (the embedding rows read are negligible)."""
        tensors = [self.lm_head, self.final_norm]
        for layer in self.layers:
            tensors += [layer.input_norm, layer.qkv, layer.o, layer.post_norm, layer.gate_up, layer.down]
            if layer.qkv_bias is not None:
                tensors.append(layer.qkv_bias)
        return sum(t.numel() * t.element_size() for t in tensors)


def check_supported(model, max_len: int) -> None:
    """Refuse (ValueError, naming the feature) a transformers model whose config asks for what the
    engine does not compute, rather than load it and decode wrong tokens: another architecture or
    activation, sliding-window attention that a sequence of `max_len` positions would reach, a
    rotary embedding that changes with the sequence length or covers only part of each head,
    biases other than q/k/v (Llama's attention_bias puts one on o_proj too; mlp_bias)."""
    config = model.config
    if config.model_type not in SUPPORTED:
        raise ValueError(f"the decode engine supports {', '.join(SUPPORTED)} models, not {config.model_type!r}")
    if getattr(config, "hidden_act", "silu") != "silu":
        raise ValueError(f"unsupported activation {config.hidden_act!r}: the engine computes silu(gate) * up")
    window = getattr(config, "sliding_window", None)
    layer_types = getattr(config, "layer_types", None) or []
    sliding = window is not None and (not layer_types or "sliding_attention" in layer_types)
    if sliding and window < max_len:
        raise ValueError(f"sliding-window attention (window {window} < {max_len} positions) is not supported: "
                         f"the engine attends to every earlier position; use max_len <= {window}")
    rope = dict(getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {})
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    if rope_type not in STATIC_ROPE_TYPES:
        raise ValueError(f"rope type {rope_type!r} is not supported (only {', '.join(STATIC_ROPE_TYPES)}): "
                         "its rotary table changes with the sequence length")
    partial = rope.get("partial_rotary_factor", getattr(config, "partial_rotary_factor", 1.0))
    if partial is not None and partial != 1.0:
        raise ValueError(f"partial rotary embedding (partial_rotary_factor {partial}) is not supported")
    for index, block in enumerate(model.model.layers):
        att, mlp = block.self_attn, block.mlp
        qkv_biases = [getattr(att, name).bias is not None for name in ("q_proj", "k_proj", "v_proj")]
        if any(qkv_biases) and not all(qkv_biases):
            raise ValueError(f"layer {index}: a bias on only some of q/k/v_proj is not supported")
        extra = [f"{part}.bias" for part, module in (("o_proj", att.o_proj), ("gate_proj", mlp.gate_proj),
                                                     ("up_proj", mlp.up_proj), ("down_proj", mlp.down_proj))
                 if module.bias is not None]
        if extra:
            raise ValueError(f"layer {index}: {', '.join(extra)} not supported (attention_bias on a Llama "
                             "config puts a bias on o_proj, mlp_bias on the MLP); only q/k/v biases are")


def from_hf(model) -> DecoderWeights:
    """Fused copies of a transformers causal LM's weights (the embedding is shared, not copied)."""
    import torch

    config = model.config
    if config.model_type not in SUPPORTED:
        raise ValueError(f"the decode engine supports {', '.join(SUPPORTED)} models, not {config.model_type!r}")
    if getattr(config, "hidden_act", "silu") != "silu":
        raise ValueError(f"unsupported activation {config.hidden_act!r}")
    n_heads = config.num_attention_heads
    n_kv = getattr(config, "num_key_value_heads", None) or n_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // n_heads
    layers = []
    with torch.no_grad():
        for block in model.model.layers:
            att, mlp = block.self_attn, block.mlp
            biases = [p.bias for p in (att.q_proj, att.k_proj, att.v_proj)]
            qkv_bias = torch.cat(biases) if all(b is not None for b in biases) else None
            layers.append(LayerWeights(
                input_norm=block.input_layernorm.weight.detach(),
                qkv=torch.cat([att.q_proj.weight, att.k_proj.weight, att.v_proj.weight]).detach(),
                qkv_bias=qkv_bias,
                o=att.o_proj.weight.detach(),
                post_norm=block.post_attention_layernorm.weight.detach(),
                gate_up=torch.cat([mlp.gate_proj.weight, mlp.up_proj.weight]).detach(),
                down=mlp.down_proj.weight.detach(),
            ))
    embed = model.model.embed_tokens.weight.detach()
    return DecoderWeights(embed=embed, lm_head=model.lm_head.weight.detach(),
                          final_norm=model.model.norm.weight.detach(), layers=layers,
                          n_heads=n_heads, n_kv_heads=n_kv, head_dim=head_dim,
                          eps=config.rms_norm_eps, vocab_size=embed.shape[0])
