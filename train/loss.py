"""The training loss: mlx-lm's masked cross-entropy, with the output head applied to supervised positions only.

mlx-lm's `default_loss` computes logits for every position of the batch and then masks all but the completion.
For chat samples whose completion is a short tool call after a long prompt (Qwen2.5 with the agent's tools: ~17
supervised tokens of ~530), almost all of that work is thrown away, and with a 152k-token vocabulary the head is
a large part of a step: its matmul forward and backward, and a [batch, length, vocab] float32 logits tensor
(320 MB per sample) with its softmax and gradient.

`supervised_loss` runs the model's body, gathers the hidden states at the supervised positions (precomputed by
`collate`, padded to a multiple of 32 with zero weight so `mx.compile` sees few shapes) and applies the head to
those alone. Same value and gradients as `default_loss` up to float rounding; `choose` checks that on a real
batch before training and falls back to `default_loss` for a model whose forward is not body + head.

A session sample (`core.samples`) supervises every assistant turn of one trajectory; its positions are the
tokens of each turn's span. mlx-lm's one (offset, length) pair per row cannot say that, so with session
samples the reference is `all_positions_loss` (the same logits everywhere, counted at those positions). Every
loss here is the sum of the token losses over the number of supervised tokens in the batch, so a session row
gives the value and gradients of its per-turn rows batched together (tests/test_train_loss.py), except for
one target per per-turn row that mlx-lm's mask adds after the sequence (the padding id) and a session,
having a real token there, does not.
"""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn
import numpy as np

POSITION_PAD = 32
MIN_PREFIX = 32  # a shorter shared prefix saves too little to be worth caching


def supervised_positions(
    lengths: np.ndarray, width: int, spans: list[tuple[tuple[int, int], ...] | None] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Flat indices into the [batch, width - 1] targets that the loss counts, and their weights (1, or 0 for padding).

    Target t of row r predicts token t + 1. A per-turn row is mlx-lm's mask for (offset, length): offset <= t + 1
    <= length (the last of which is the padding id after the sequence). A session row (`spans[r]` given)
    supervises exactly the tokens of its spans: start <= t + 1 < min(end, length)."""
    steps = np.arange(1, width)
    mask = (steps[None, :] >= lengths[:, :1]) & (steps[None, :] <= lengths[:, 1:])
    for row, row_spans in enumerate(spans or []):
        if row_spans is not None:
            length = lengths[row, 1]
            mask[row] = np.any([(steps >= a) & (steps < min(b, length)) for a, b in row_spans], axis=0)
    positions = np.flatnonzero(mask).astype(np.int32)
    padded = max(POSITION_PAD, -(-len(positions) // POSITION_PAD) * POSITION_PAD)
    weights = np.zeros(padded, np.float32)
    weights[: len(positions)] = 1
    return np.pad(positions, (0, padded - len(positions))), weights


def head(model):
    """The model's output projection, or None if its forward is not `head(model.model(inputs))`."""
    body = getattr(model, "model", None)
    if body is None or not hasattr(body, "layers"):
        return None
    if getattr(model, "lm_head", None) is not None:
        return lambda h: model.lm_head(h)
    args = getattr(model, "args", None)
    if getattr(args, "tie_word_embeddings", False) and hasattr(body, "embed_tokens"):
        return lambda h: model.model.embed_tokens.as_linear(h)
    return None


def supervised_loss(model, batch, lengths, positions, weights):
    return head_loss(model, model.model(batch[:, :-1]), batch, positions, weights)


def head_loss(model, hidden, batch, positions, weights):
    """Cross-entropy of the head applied to `hidden` (the body's output) at the supervised positions."""
    picked = hidden.reshape(-1, hidden.shape[-1])[positions]
    return positions_loss(head(model)(picked), batch, positions, weights)


def positions_loss(logits, batch, positions, weights):
    """Mean cross-entropy of `logits` (one row per supervised position) against the batch's next tokens:
    the sum of the token losses over the number of supervised tokens, mlx-lm's normalization."""
    ce = nn.losses.cross_entropy(logits, batch[:, 1:].reshape(-1)[positions]) * weights
    ntoks = weights.sum()
    return ce.astype(mx.float32).sum() / ntoks, ntoks.astype(mx.int32)


def full_loss(model, batch, lengths, positions=None, weights=None):
    """mlx-lm's `default_loss` on our 4-part batches."""
    from mlx_lm.tuner.trainer import default_loss

    return default_loss(model, batch, lengths)


def all_positions_loss(model, batch, lengths, positions, weights):
    """mlx-lm's default computation (logits at every position), counted at the supervised positions: the
    reference for session samples, whose masks one (offset, length) pair per row cannot express."""
    logits = model(batch[:, :-1])
    return positions_loss(logits.reshape(-1, logits.shape[-1])[positions], batch, positions, weights)


def choose(
    model, batch, enabled: bool = True, prefix_tokens: list[int] | None = None, sessions: bool = False
) -> tuple[callable, str]:
    """The cheapest loss that gives the reference value on `batch`: the head on supervised positions only, and
    the frozen blocks' work on a shared prompt prefix done once (`prefix_tokens`, when the bottom blocks are
    frozen). The reference is mlx-lm's default loss, or with session samples (`sessions`; `batch` should hold
    one) the same computation over their spans. Each candidate is checked against it on a real batch; a model
    whose forward is not body + head, or a disagreement, falls back to the reference."""
    reference, name = (
        (all_positions_loss, "logits at every position, counted on every assistant turn of session samples")
        if sessions
        else (full_loss, "mlx-lm's default")
    )
    if not enabled:
        return reference, f"loss: {name} (logits at every position)"
    if head(model) is None:
        return reference, f"loss: {name} (the model's forward is not body + lm_head)"
    expected, n_expected = reference(model, *batch)
    candidates = [(supervised_loss, "output head on supervised positions only")]
    prefix = build_prefix(model, prefix_tokens) if prefix_tokens else None
    if prefix is not None:
        candidates.insert(
            0,
            (
                make_prefix_loss(prefix),
                f"output head on supervised positions only; blocks 1-{prefix.frozen} (frozen) run once on the "
                f"{prefix.length}-token prompt prefix every sample shares",
            ),
        )
    rejected = []
    for loss_fn, description in candidates:
        got, n_got = loss_fn(model, *batch)
        mx.eval(expected, got, n_expected, n_got)
        if n_expected.item() == n_got.item() and np.isclose(
            got.item(), expected.item(), rtol=1e-4, atol=1e-4
        ):
            return loss_fn, f"loss: {description} (checked equal to {name}: {expected.item():.5f})"
        rejected.append(f"{description} gave {got.item():.5f} over {n_got.item()} tokens")
    return reference, (
        f"loss: {name}, {expected.item():.5f} over {n_expected.item()} tokens; rejected: "
        + "; ".join(rejected)
    )


# ------------------------------------------------------------------------------------------ frozen prefix
#
# An agent's requests all start with the same system prompt and tool listing (Qwen2.5 with the demo's tools: 461
# of ~530 tokens). When LoRA adapts only the last blocks, the blocks below are frozen, so their output on that
# shared prefix is the same for every sample and every step: `build_prefix` computes it once (the hidden state
# after the frozen blocks, and their keys and values), and `prefix_body` runs the frozen blocks on each sample's
# suffix only, attending to the cached keys and values, before the trainable blocks see the whole sequence.


class _PrefixKV:
    """The cache interface mlx-lm's attention uses (`offset`, `update_and_fetch`), over fixed prefix keys/values."""

    def __init__(self, keys: mx.array, values: mx.array):
        self.keys, self.values, self.offset = keys, values, keys.shape[2]

    def update_and_fetch(self, keys: mx.array, values: mx.array):
        batch = keys.shape[0]
        fixed_k = mx.broadcast_to(self.keys, (batch, *self.keys.shape[1:]))
        fixed_v = mx.broadcast_to(self.values, (batch, *self.values.shape[1:]))
        return mx.concatenate([fixed_k, keys], axis=2), mx.concatenate([fixed_v, values], axis=2)


class FrozenPrefix:
    def __init__(self, length: int, frozen: int, hidden: mx.array, kv: list[tuple[mx.array, mx.array]]):
        self.length, self.frozen, self.hidden, self.kv = length, frozen, hidden, kv


def shared_prefix_length(token_lists: list[list[int]]) -> int:
    """Length of the longest common prefix, kept below every sequence's input length (tokens[:-1])."""
    if not token_lists:
        return 0
    first = np.asarray(token_lists[0])
    length = min(len(t) for t in token_lists) - 1
    for tokens in token_lists[1:]:
        tokens = np.asarray(tokens[:length])
        differ = np.flatnonzero(tokens != first[: len(tokens)])
        length = min(length, int(differ[0]) if len(differ) else len(tokens))
    return max(length, 0)


def shared_prefix(token_lists: list[list[int]], minimum: int = MIN_PREFIX) -> list[int] | None:
    """The tokens every sequence starts with (see `shared_prefix_length`), or None if fewer than `minimum`."""
    length = shared_prefix_length(token_lists)
    return list(token_lists[0][:length]) if length >= minimum else None


def frozen_blocks(model) -> int:
    """How many leading blocks (and the input embedding) have no trainable parameters: 0 if the embedding trains."""
    from mlx.utils import tree_flatten

    inner = model.model
    if tree_flatten(inner.embed_tokens.trainable_parameters()):
        return 0
    count = 0
    for layer in inner.layers:
        if tree_flatten(layer.trainable_parameters()):
            break
        count += 1
    return count


def build_prefix(model, prefix_tokens: list[int]) -> FrozenPrefix | None:
    """The frozen blocks' output and keys/values on the shared prefix; None when nothing below is frozen."""
    from mlx_lm.models.base import create_attention_mask
    from mlx_lm.models.cache import KVCache

    inner = model.model
    frozen = frozen_blocks(model)
    if frozen == 0 or frozen == len(inner.layers) or not prefix_tokens:
        return None
    hidden = inner.embed_tokens(mx.array(prefix_tokens)[None])
    caches = [KVCache() for _ in range(frozen)]
    mask = create_attention_mask(hidden, None)
    for layer, cache in zip(inner.layers[:frozen], caches, strict=True):
        hidden = layer(hidden, mask, cache)
    kv = [(cache.keys[..., : cache.offset, :], cache.values[..., : cache.offset, :]) for cache in caches]
    mx.eval(hidden, kv)
    return FrozenPrefix(len(prefix_tokens), frozen, hidden, kv)


def prefix_body(model, inputs: mx.array, prefix: FrozenPrefix) -> mx.array:
    """`model.model(inputs)` for inputs that start with the prefix, with the frozen blocks run on the suffix only."""
    from mlx_lm.models.base import create_attention_mask, create_causal_mask

    inner = model.model
    batch = inputs.shape[0]
    hidden = inner.embed_tokens(inputs[:, prefix.length :])
    mask = create_causal_mask(hidden.shape[1], offset=prefix.length)
    for layer, (keys, values) in zip(inner.layers[: prefix.frozen], prefix.kv, strict=True):
        hidden = layer(hidden, mask, _PrefixKV(keys, values))
    fixed = mx.broadcast_to(prefix.hidden, (batch, *prefix.hidden.shape[1:]))
    hidden = mx.concatenate([fixed, hidden], axis=1)
    mask = create_attention_mask(hidden, None)
    for layer in inner.layers[prefix.frozen :]:
        hidden = layer(hidden, mask, None)
    return inner.norm(hidden)


def make_prefix_loss(prefix: FrozenPrefix):
    def prefix_loss(model, batch, lengths, positions, weights):
        return head_loss(model, prefix_body(model, batch[:, :-1], prefix), batch, positions, weights)

    return prefix_loss
