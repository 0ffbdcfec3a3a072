"""In-process batched generation for turn-level evaluation, with the prompts' shared prefix computed once.

    texts = generate_turns(model, tokenizer, prompts, batch_size=16)   # [(text, finish_reason, n_tokens)]

Held-out turns of one agent share a long prefix: the chat template writes every tool's schema into the system
prompt before the first user word (461 of a Qwen2.5 turn's 505 tokens on average, the demo suite). On a CPU the
prefill of those tokens is most of an evaluation's time, so the prefix's KV cache is computed once and each
prompt is inserted into mlx-lm's `BatchGenerator` with a copy of it, as `mlx_lm server`'s prompt cache does for
requests that share a prefix (`LRUPromptCache.fetch_nearest_cache`). Only the rest of each prompt is prefilled.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

Progress = Callable[[int, int], None]
PREFILL_CHUNK = 512  # tokens per forward pass while the shared prefix is prefilled (mlx-lm's default step)
MIN_SHARED_PREFIX = 32  # a shorter shared prefix is not worth a cache per prompt


def shared_prefix_length(prompts: list[list[int]]) -> int:
    """Tokens every prompt starts with, leaving each at least one token of its own to prefill."""
    first = prompts[0]
    length = min(len(p) for p in prompts) - 1
    for prompt in prompts[1:]:
        length = next((i for i in range(length) if prompt[i] != first[i]), length)
    return max(length, 0)


def prefilled_cache(model, tokens: list[int]) -> list:
    """The model's KV cache after reading `tokens` (chunked, as mlx-lm's generate_step prefills)."""
    import mlx.core as mx
    from mlx_lm.models.cache import make_prompt_cache

    cache = make_prompt_cache(model)
    for start in range(0, len(tokens), PREFILL_CHUNK):
        model(mx.array(tokens[start : start + PREFILL_CHUNK])[None], cache=cache)
        mx.eval([c.state for c in cache])
    return cache


def generate_turns(
    model,
    tokenizer,
    prompts: list[list[int]],
    *,
    batch_size: int = 8,
    max_tokens: int = 256,
    sampler=None,
    progress: Progress | None = None,
    share_prefix: bool = True,
) -> list[tuple[str, str, int]]:
    """(text, finish_reason, completion tokens) per prompt, generated with mlx-lm's BatchGenerator.

    Greedy unless a `sampler` is given. Prompts go in shortest first so each prefill batch pads little; with
    `share_prefix` the tokens all prompts start with are prefilled once and copied into each prompt's cache."""
    from mlx_lm.generate import BatchGenerator

    if not prompts:
        return []
    shared = shared_prefix_length(prompts) if share_prefix and len(prompts) > 1 else 0
    if shared < MIN_SHARED_PREFIX:
        shared = 0
    prefix_cache = prefilled_cache(model, prompts[0][:shared]) if shared else None
    generator = BatchGenerator(
        model,
        max_tokens=max_tokens,
        stop_tokens=[[t] for t in tokenizer.eos_token_ids],
        sampler=sampler,
        completion_batch_size=batch_size,
        prefill_batch_size=batch_size,
    )
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    caches = [copy.deepcopy(prefix_cache) for _ in order] if prefix_cache is not None else None
    uids = generator.insert([prompts[i][shared:] for i in order], caches=caches)
    index_of = dict(zip(uids, order, strict=True))
    detokenizers = {uid: tokenizer.detokenizer for uid in uids}
    counts = dict.fromkeys(uids, 0)
    results: list[tuple[str, str, int] | None] = [None] * len(prompts)
    done = 0
    try:
        while responses := generator.next_generated():
            for response in responses:
                detokenizer = detokenizers[response.uid]
                if response.finish_reason != "stop":  # the stop token itself is not part of the answer
                    detokenizer.add_token(response.token)
                    counts[response.uid] += 1
                if response.finish_reason is not None:
                    detokenizer.finalize()
                    results[index_of[response.uid]] = (
                        detokenizer.text,
                        response.finish_reason,
                        counts[response.uid],
                    )
                    done += 1
                    if progress:
                        progress(done, len(prompts))
    finally:
        generator.close()
    missing = [i for i, r in enumerate(results) if r is None]
    if missing:
        raise RuntimeError(f"BatchGenerator returned no answer for prompts {missing[:5]}")
    return results  # type: ignore[return-value]
