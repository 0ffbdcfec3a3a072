"""train.loss: the cheaper losses give mlx-lm's `default_loss` value and gradients on the tiny model."""

from __future__ import annotations

from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest
from mlx.utils import tree_flatten

from train import adapters
from train import loss as loss_lib
from train import preflight as pf
from train.batches import TokenizedDataset, collate
from train.config import TrainConfig


@pytest.fixture(scope="module")
def tokenized(tiny_model):
    from mlx_lm.utils import load

    from models.tiny import tool_call_samples

    _, tokenizer = load(str(tiny_model))
    samples = [
        pf.Sample(where=f"samples.jsonl:{i + 1}", data=s) for i, s in enumerate(tool_call_samples(6, 5))
    ]
    return [pf.tokenize(tokenizer, s, True) for s in samples]


def lora_model(tiny_model, *, lm_head: bool):
    """The tiny model (2 blocks, tied head) with LoRA on its last block, and on the head when `lm_head`."""
    from mlx_lm.utils import load

    model, _ = load(str(tiny_model))
    mx.random.seed(0)
    config = TrainConfig(model=str(tiny_model), num_layers=1, lora_rank=4, lora_lm_head=lm_head)
    adapters.setup(model, config)
    perturb(model)  # LoRA's B starts at zero: random values make every gradient path non-trivial
    return model


def perturb(model) -> None:
    from mlx.utils import tree_unflatten

    updates = [
        (name, mx.random.normal(value.shape) * 0.05)
        for name, value in tree_flatten(model.trainable_parameters())
        if name.endswith("lora_b")
    ]
    model.update(tree_unflatten(updates))


def batch_of(tokenized, width_limit: int = 2048):
    dataset = TokenizedDataset(tokenized[:3])
    return collate(dataset, [0, 1, 2], width_limit)


def value_and_grads(model, loss_fn, batch):
    (value, ntoks), grads = nn.value_and_grad(model, loss_fn)(model, *batch)
    mx.eval(value, ntoks, grads)
    return value.item(), ntoks.item(), dict(tree_flatten(grads))


def assert_same(expected, got):
    assert got[1] == expected[1]
    assert got[0] == pytest.approx(expected[0], rel=1e-4)
    assert expected[2].keys() == got[2].keys()
    for name, grad in expected[2].items():
        np.testing.assert_allclose(np.array(got[2][name]), np.array(grad), rtol=2e-3, atol=1e-6, err_msg=name)


def test_supervised_positions_are_mlx_lm_mask():
    lengths = np.array([[5, 9], [3, 12]], np.int32)
    width = 13
    positions, weights = loss_lib.supervised_positions(lengths, width)
    steps = np.arange(1, width)
    mask = (steps >= lengths[:, :1]) & (steps <= lengths[:, 1:])  # mlx-lm's default_loss mask
    assert sorted(positions[weights > 0].tolist()) == np.flatnonzero(mask).tolist()
    assert len(positions) % loss_lib.POSITION_PAD == 0 and weights.sum() == mask.sum()


def test_head_on_supervised_positions_gives_default_loss_and_gradients(tiny_model, tokenized):
    model = lora_model(tiny_model, lm_head=True)  # tied head: LoRA on the embedding, so nothing is frozen
    batch = batch_of(tokenized)
    assert batch[0].shape[0] == 3 and len({len(t.tokens) for t in tokenized[:3]}) > 1  # padded rows
    expected = value_and_grads(model, loss_lib.full_loss, batch)
    assert_same(expected, value_and_grads(model, loss_lib.supervised_loss, batch))
    assert any(name.startswith("model.embed_tokens") for name in expected[2])
    assert loss_lib.frozen_blocks(model) == 0


def test_frozen_prefix_gives_default_loss_and_gradients(tiny_model, tokenized):
    model = lora_model(tiny_model, lm_head=False)  # block 1 frozen, block 2 trains
    assert loss_lib.frozen_blocks(model) == 1
    length = loss_lib.shared_prefix_length([t.tokens for t in tokenized])
    assert length > 32  # system prompt + tool listing
    prefix = loss_lib.build_prefix(model, tokenized[0].tokens[:length])
    assert prefix is not None and prefix.frozen == 1 and prefix.length == length
    batch = batch_of(tokenized)
    expected = value_and_grads(model, loss_lib.full_loss, batch)
    assert_same(expected, value_and_grads(model, loss_lib.make_prefix_loss(prefix), batch))

    loss_fn, note = loss_lib.choose(model, batch, prefix_tokens=tokenized[0].tokens[:length])
    assert "blocks 1-1 (frozen) run once" in note, note


def test_choose_rejects_a_wrong_prefix_and_a_model_it_cannot_split(tiny_model, tokenized):
    model = lora_model(tiny_model, lm_head=False)
    batch = batch_of(tokenized)
    length = loss_lib.shared_prefix_length([t.tokens for t in tokenized])
    wrong = list(tokenized[0].tokens[:length])
    wrong[length // 2] = (wrong[length // 2] + 1) % 100  # not what the samples start with
    loss_fn, note = loss_lib.choose(model, batch, prefix_tokens=wrong)
    assert loss_fn is loss_lib.supervised_loss, note
    assert "rejected" not in note and "supervised positions only (checked" in note

    class Opaque(nn.Module):  # a forward that is not body + head
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def __call__(self, inputs):
            return self.inner(inputs) * 0.5

    loss_fn, note = loss_lib.choose(Opaque(model), batch)
    assert loss_fn is loss_lib.full_loss and "not body + lm_head" in note

    loss_fn, note = loss_lib.choose(model, batch, enabled=False)
    assert loss_fn is loss_lib.full_loss


def test_shared_prefix_length():
    assert loss_lib.shared_prefix_length([[1, 2, 3, 4], [1, 2, 5, 6, 7]]) == 2
    assert loss_lib.shared_prefix_length([[1, 2, 3], [1, 2, 3, 4]]) == 2  # below the shortest input
    assert loss_lib.shared_prefix_length([[9, 1], [1, 2]]) == 0
    assert loss_lib.shared_prefix([[1, 2, 3, 4], [1, 2, 5, 6, 7]], minimum=2) == [1, 2]
    assert loss_lib.shared_prefix([[1, 2, 3, 4], [1, 2, 5, 6, 7]], minimum=3) is None


def test_train_run_records_the_loss_it_used(tmp_path, tiny_model, tokenized):
    import json

    from test_train_sessions import SMALL_RUN

    import train
    from models.tiny import tool_call_samples

    data = tmp_path / "data"
    data.mkdir()
    for split, (n, seed) in {"train": (12, 1), "valid": (4, 2)}.items():
        (data / f"{split}.jsonl").write_text(
            "".join(json.dumps(s) + "\n" for s in tool_call_samples(n, seed))
        )
    config = train.TrainConfig(
        model=str(tiny_model), data=str(data), adapter=str(tmp_path / "adapter"), **SMALL_RUN
    )
    adapter = train.run(config)
    manifest = json.loads((Path(adapter) / "manifest.json").read_text())
    assert "run once on the" in manifest["loss"] and "checked equal" in manifest["loss"]
    metrics = [json.loads(line) for line in (Path(adapter) / "metrics.jsonl").read_text().splitlines()]
    assert all(np.isfinite(m.get("train_loss", 0)) for m in metrics)

    # the CLI flag turns it off; the manifest says so
    from train.__main__ import main as train_cli

    off = tmp_path / "adapter-off"
    code = train_cli(
        ["--model", str(tiny_model), "--data", str(data), "--adapter", str(off), "--num-layers", "1"]
        + ["--iters", "2", "--batch-size", "2", "--steps-per-eval", "2", "--save-every", "2"]
        + ["--steps-per-report", "1", "--timing-steps", "0", "--no-head-on-supervised"]
    )
    assert code in (0, None)
    manifest = json.loads((off / "manifest.json").read_text())
    assert manifest["loss"].startswith("loss: mlx-lm's default (logits at every position)")
    assert manifest["config"]["head_on_supervised"] is False


def test_step_cost_benchmark_times_every_loss_and_checks_them(tiny_model):
    import importlib.util

    path = Path(__file__).resolve().parent.parent / "bench" / "train_step_cost.py"
    spec = importlib.util.spec_from_file_location("train_step_cost", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    benchmarks = path.parent.parent / "docs" / "BENCHMARKS.md"
    before = benchmarks.read_text() if benchmarks.exists() else None
    result = bench.main(
        ["--model", str(tiny_model), "--num-layers", "1", "--no-lm-head", "--rounds", "1", "--steps", "1"]
        + ["--no-write"]
    )
    assert list(result["median"]) == [
        "mlx-lm default",
        "head on supervised positions",
        "+ frozen prefix once",
    ]
    assert result["frozen_blocks"] == 1 and result["prefix"] > 32
    for name, agreement in result["agreement"].items():
        assert agreement["loss"] == pytest.approx(result["agreement"]["mlx-lm default"]["loss"], rel=1e-4), (
            name
        )
        assert agreement["max_relative_grad_difference"] < 1e-3, name
    assert all(v > 0 for v in result["median"].values())
    assert (benchmarks.read_text() if benchmarks.exists() else None) == before


# ------------------------------------------------------------------------------------------ session samples


@pytest.fixture(scope="module")
def session_items(tiny_model):
    """A session of 4 chained tool-call exchanges, tokenized whole (with spans) and as its per-turn samples."""
    from mlx_lm.utils import load
    from test_train_sessions import sessions

    _, tokenizer = load(str(tiny_model))
    whole = pf.tokenize(tokenizer, pf.Sample("s.jsonl:1", sessions(1, 12, parts=4)[0]), True)
    turns = [pf.tokenize(tokenizer, turn, True) for turn in whole.sample.per_turn()]
    assert whole.spans is not None and len(whole.spans) == len(turns) >= 4
    return whole, turns


def completion_only(item: pf.Tokenized) -> pf.Tokenized:
    """A per-turn item masked to its completion's tokens [offset, length), without mlx-lm's extra target."""
    return pf.Tokenized(item.sample, item.tokens, item.offset, ((item.offset, len(item.tokens)),))


def test_supervised_positions_of_session_rows():
    lengths = np.array([[3, 12], [5, 9]], np.int32)
    positions, weights = loss_lib.supervised_positions(lengths, 13, [((3, 5), (8, 14)), None])
    real = positions[weights > 0]
    assert real[real < 12].tolist() == [2, 3, 7, 8, 9, 10]  # row 0: tokens 3, 4 and 8..11 (cut at length 12)
    assert (real[real >= 12] - 12).tolist() == [4, 5, 6, 7, 8]  # row 1: mlx-lm's mask, offset 5 to length 9


def test_session_loss_is_the_sum_of_its_per_turn_losses(tiny_model, session_items):
    """One session row against its per-turn rows, same weights: the loss is the sum of the token losses over
    the number of supervised tokens (mlx-lm's normalization), and both batches hold the same tokens with the
    same context, so value and gradients agree; for the reference (logits everywhere), the head on supervised
    positions, and the frozen prefix run once."""
    whole, turns = session_items
    session = collate(TokenizedDataset([whole]), [0], 4096)
    per_turn = collate(TokenizedDataset([completion_only(t) for t in turns]), list(range(len(turns))), 4096)
    assert int(session[3].sum().item()) == sum(len(t.tokens) - t.offset for t in turns) == whole.supervised

    model = lora_model(tiny_model, lm_head=False)  # block 1 frozen: the prefix loss applies
    reference = value_and_grads(model, loss_lib.all_positions_loss, per_turn)
    assert_same(reference, value_and_grads(model, loss_lib.all_positions_loss, session))
    assert_same(reference, value_and_grads(model, loss_lib.supervised_loss, session))
    length = loss_lib.shared_prefix_length([whole.tokens] + [t.tokens for t in turns])
    prefix = loss_lib.build_prefix(model, whole.tokens[:length])
    assert prefix is not None and prefix.length > 32
    assert_same(reference, value_and_grads(model, loss_lib.make_prefix_loss(prefix), session))
    tied = lora_model(tiny_model, lm_head=True)  # nothing frozen, LoRA on the tied head: every gradient path
    assert_same(
        value_and_grads(tied, loss_lib.all_positions_loss, per_turn),
        value_and_grads(tied, loss_lib.supervised_loss, session),
    )

    loss_fn, note = loss_lib.choose(model, session, prefix_tokens=whole.tokens[:length], sessions=True)
    assert "run once" in note and "checked equal to logits at every position" in note, note


def test_a_session_supervising_some_turns_is_the_sum_of_their_per_turn_losses(tiny_model):
    """A session that names its turns (curate's: one turn not kept, and cut after the last kept one): its loss
    is the sum of those turns' per-turn losses, value and gradients; a turn left out adds nothing."""
    from mlx_lm.utils import load
    from test_train_sessions import sessions, supervising

    from core.samples import assistant_turns

    _, tokenizer = load(str(tiny_model))
    full = sessions(1, 15, parts=5)[0]
    every = assistant_turns(full)
    chosen = supervising(full, [every[1], every[3]])  # not the first, not the third, cut before the fifth
    whole = pf.tokenize(tokenizer, pf.Sample("s.jsonl:1", chosen), True)
    turns = [pf.tokenize(tokenizer, turn, True) for turn in whole.sample.per_turn()]
    assert len(whole.spans) == len(turns) == 2 and len(whole.tokens) == len(turns[-1].tokens)
    session = collate(TokenizedDataset([whole]), [0], 4096)
    per_turn = collate(TokenizedDataset([completion_only(t) for t in turns]), [0, 1], 4096)
    assert int(session[3].sum().item()) == sum(len(t.tokens) - t.offset for t in turns) == whole.supervised

    model = lora_model(tiny_model, lm_head=False)
    reference = value_and_grads(model, loss_lib.all_positions_loss, per_turn)
    assert_same(reference, value_and_grads(model, loss_lib.supervised_loss, session))
    length = loss_lib.shared_prefix_length([whole.tokens] + [t.tokens for t in turns])
    prefix = loss_lib.build_prefix(model, whole.tokens[:length])
    assert_same(reference, value_and_grads(model, loss_lib.make_prefix_loss(prefix), session))
    every_turn = pf.tokenize(
        tokenizer, pf.Sample("s.jsonl:2", {**chosen, "supervise": "all_assistant_turns"}), True
    )
    assert every_turn.tokens == whole.tokens and len(every_turn.spans) == 4  # the same text, more targets
    more = value_and_grads(
        model, loss_lib.supervised_loss, collate(TokenizedDataset([every_turn]), [0], 4096)
    )
    assert more[1] > reference[1]


def test_mlx_lm_mask_adds_one_padding_target_per_turn(tiny_model, session_items):
    """mlx-lm's default mask (offset <= t + 1 <= length) also counts, in every per-turn row, the target after
    the sequence: predicting the padding id 0. A session has a real token there, so only completion tokens
    are comparable; the difference is exactly those padding targets."""
    whole, turns = session_items
    model = lora_model(tiny_model, lm_head=False)
    rows = list(range(len(turns)))
    plain = collate(TokenizedDataset(turns), rows, 4096)
    exact = collate(TokenizedDataset([completion_only(t) for t in turns]), rows, 4096)
    default, n_default = loss_lib.full_loss(model, *plain)
    mine, n_mine = loss_lib.all_positions_loss(model, *plain)
    completion, n_completion = loss_lib.all_positions_loss(model, *exact)
    assert n_default.item() == n_mine.item() == n_completion.item() + len(turns)
    assert mine.item() == pytest.approx(
        default.item(), rel=1e-5
    )  # the reference is mlx-lm's on per-turn rows
    logits = model(plain[0][:, :-1])
    padding = sum(-nn.log_softmax(logits[r, len(t.tokens) - 1])[0].item() for r, t in enumerate(turns))
    assert plain[0][0, len(turns[0].tokens)].item() == 0
    total = default.item() * n_default.item()
    assert total == pytest.approx(completion.item() * n_completion.item() + padding, rel=1e-4)
