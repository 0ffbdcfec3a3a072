"""What gets trained (LoRA/DoRA layers or full weights), the adapter_config.json mlx-lm reads back, and fusing.

LoRA on the output head: an untied model has an `lm_head` Linear, adapted like any other. A model with tied
embeddings (Qwen2.5-0.5B, the tiny test model) has no head module: its logits are
`embed_tokens.as_linear(h)`. mlx-lm's LoRAEmbedding implements `as_linear` with the same low-rank delta, so
adapting the embedding module adapts the head too (the two cannot be separated when they share one matrix).
`lora_keys()` returns full module names for those (outside the blocks), which `linear_to_lora_layers` matches in
its model-wide pass, plus the block-relative names it would choose by default.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def block_keys(model) -> list[str]:
    """The block-relative module names mlx-lm's `linear_to_lora_layers` adapts when given no keys."""
    import mlx.nn as nn
    from mlx_lm.models.switch_layers import QuantizedSwitchLinear, SwitchLinear

    types = (
        nn.Linear,
        nn.QuantizedLinear,
        SwitchLinear,
        QuantizedSwitchLinear,
        nn.Embedding,
        nn.QuantizedEmbedding,
    )
    keys: set[str] = set()
    for layer in model.layers:
        layer.apply_to_modules(
            lambda name, m: keys.add(name) if hasattr(m, "to_lora") or isinstance(m, types) else None
        )
    return sorted(keys)


def head_and_embedding(model) -> tuple[str | None, str | None, bool]:
    """(head module name, input embedding module name, tied) for a loaded mlx-lm model."""
    import mlx.nn as nn

    head = embedding = None
    for name, module in model.named_modules():
        if ".layers." in f".{name}." or name.startswith("layers."):
            continue
        last = name.rsplit(".", 1)[-1]
        if last == "lm_head" and isinstance(module, nn.Linear | nn.QuantizedLinear):
            head = name
        elif isinstance(module, nn.Embedding | nn.QuantizedEmbedding) and embedding is None:
            embedding = name
    return head, embedding, head is None and embedding is not None


def lora_keys(
    model, *, keys: list[str] | None, lm_head: bool, embeddings: bool
) -> tuple[list[str] | None, list[str]]:
    """Keys for `linear_to_lora_layers` (None = mlx-lm's default) and notes on what the head/embedding flags did."""
    notes = []
    if not (lm_head or embeddings):
        return (list(keys) if keys else None), notes
    chosen = set(keys) if keys else set(block_keys(model))
    head, embedding, tied = head_and_embedding(model)
    if lm_head:
        if head:
            chosen.add(head)
            notes.append(f"lm_head: LoRA on {head}")
        elif embedding:
            chosen.add(embedding)
            notes.append(f"lm_head: tied to {embedding}; LoRA on it adapts the head and the input embedding")
        else:
            raise ValueError(
                "--lora-lm-head: the model has neither an lm_head Linear nor an embedding module"
            )
    if embeddings:
        if not embedding:
            raise ValueError("--lora-embeddings: the model has no embedding module")
        chosen.add(embedding)
        if not (lm_head and tied):
            notes.append(
                f"embeddings: LoRA on {embedding}" + (" (tied: the head changes too)" if tied else "")
            )
    return sorted(chosen), notes


def setup(model, config) -> dict[str, Any]:
    """Freeze the model and make the configured part trainable; returns the adapter_config.json contents."""
    import mlx.core as mx
    from mlx_lm.tuner.utils import linear_to_lora_layers

    num_layers = config.num_layers
    notes = []
    if num_layers > len(model.layers):
        notes.append(
            f"num_layers {num_layers} > the model's {len(model.layers)} layers: training all of them"
        )
        num_layers = -1
    model.freeze()
    lora_parameters = None
    if config.fine_tune_type == "full":
        if num_layers == -1:
            model.unfreeze()  # everything, embeddings and head included
        else:
            for layer in model.layers[-num_layers:]:
                layer.unfreeze()
    else:
        keys, key_notes = lora_keys(
            model, keys=config.lora_keys, lm_head=config.lora_lm_head, embeddings=config.lora_embeddings
        )
        notes += key_notes
        lora_parameters = {
            "rank": config.lora_rank,
            "scale": config.lora_scale,
            "dropout": config.lora_dropout,
        }
        if keys is not None:
            lora_parameters["keys"] = keys
        linear_to_lora_layers(model, num_layers, lora_parameters, use_dora=config.fine_tune_type == "dora")
    mx.eval(model.parameters())
    adapter_config = {
        **config.to_dict(),
        "fine_tune_type": config.fine_tune_type,
        "num_layers": num_layers,
        "lora_parameters": lora_parameters,
    }
    return {"adapter_config": adapter_config, "notes": notes}


# what must agree for an adapter's weights to start another run's (its adapter_config.json against ours)
SAME_SHAPE = ("fine_tune_type", "num_layers", "lora_parameters")


def load_initial(model, adapter_config: dict[str, Any], init_dir: Path) -> str:
    """Load `init_dir`'s adapter weights into the freshly set-up trainable layers; a ValueError (one line,
    naming the file) when it was trained with other layers, rank or keys. Returns its weights' sha256."""
    import json

    import mlx.core as mx
    from mlx.utils import tree_flatten

    from core.digest import sha256_file

    config_file, weights_file = init_dir / "adapter_config.json", init_dir / "adapters.safetensors"
    for path in (config_file, weights_file):
        if not path.is_file():
            raise ValueError(f"init_adapter: {path} not found")
    theirs = json.loads(config_file.read_text())
    differ = [key for key in SAME_SHAPE if theirs.get(key) != adapter_config.get(key)]
    if differ:
        key = differ[0]
        raise ValueError(
            f"init_adapter: {config_file}: {key} is {theirs.get(key)!r}, this run's is {adapter_config.get(key)!r}"
        )
    weights = mx.load(str(weights_file))
    ours = dict(tree_flatten(model.trainable_parameters()))
    if set(weights) != set(ours) or any(weights[k].shape != ours[k].shape for k in ours):
        raise ValueError(f"init_adapter: {weights_file} does not hold this run's trainable weights")
    model.load_weights(list(weights.items()), strict=False)
    mx.eval(model.parameters())
    return sha256_file(weights_file)


def trainable_summary(model) -> dict[str, float]:
    from mlx.utils import tree_flatten
    from mlx_lm.utils import get_total_parameters

    total = get_total_parameters(model)
    trainable = sum(v.size for _, v in tree_flatten(model.trainable_parameters()))
    return {
        "trainable_parameters": trainable,
        "total_parameters": total,
        "trainable_percent": 100 * trainable / total,
    }


def fuse(model_path: str | Path, adapter_dir: str | Path, out_dir: str | Path) -> Path:
    """Write base model + adapter as one model directory (`mlx_lm server --model OUT` serves it).

    mlx-lm's own fuse steps: load with the adapter, replace every LoRA/DoRA module by its fused layer, save."""
    from mlx.utils import tree_unflatten
    from mlx_lm.utils import load, save

    model, tokenizer, config = load(str(model_path), adapter_path=str(adapter_dir), return_config=True)
    fused = [(name, module.fuse()) for name, module in model.named_modules() if hasattr(module, "fuse")]
    if fused:
        model.update_modules(tree_unflatten(fused))
    out_dir = Path(out_dir)
    save(out_dir, str(model_path), model, tokenizer, config, donate_model=False)
    return out_dir
