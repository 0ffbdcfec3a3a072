"""Which model does that server serve? Checked before a server is scored; what was scored goes in the report.

What `mlx_lm server` answers (mlx-lm 0.32.2: `handle_models_request` and `ModelProvider.load` in
mlx_lm/server.py, and measured against it serving the tiny model with one cached hub model):
- GET /v1/models lists every mlx-looking model of the local Hugging Face cache FIRST (ids "org/name", whatever
  is loaded), then the model it was started with (`--model`) as an absolute, symlink-resolved path, and that
  only when `--model` is a local directory. The adapter never shows.
- each response's `model` echoes the name the request sent. A request naming another model makes the server
  load that one (and naming the `--model` path loads it without `--adapter-path`); only the alias
  "default_model" reaches the model and adapter it was started with.

So `/v1/models[0]` names a cached model, and a response's `model` proves only what was asked. The check:
  1. the requested name is listed (an OpenAI-style server serving models by name): it is what is served;
     the alias "default_model" (mlx_lm server): the served model is the one listed entry that is a local
     absolute path, since cached hub models are listed by repo id; none or several: refused;
  2. when the report names a model (`--model`, or the model evaluate started the server with), the served
     one must be it (paths compared resolved; names compared exactly), else refused;
  3. every response must name the requested or the served model (`core.turns`, and each agent episode).
A refusal is one line: the URL, what it serves and what the report would have named.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from core.digest import combined_sha256, sha256_file
from evaluate.config import EvalError

DEFAULT_ALIAS = "default_model"


def local_path(model: str | Path | None) -> Path | None:
    """The resolved local directory of a model path, or of a hub name in the local cache; None otherwise."""
    if not model:
        return None
    if Path(model).exists():
        return Path(model).resolve()
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(str(model), local_files_only=True)).resolve()
    except Exception:  # not a repo id, or not cached: no local files to name or hash
        return None


def weights_sha256(model_dir: Path | None) -> str | None:
    """One digest over (file name, sha256) of the weight files (*.safetensors) of a model directory."""
    files = sorted(Path(model_dir).glob("*.safetensors")) if model_dir else []
    if not files:
        return None
    return combined_sha256((path.name, sha256_file(path)) for path in files)


def identity(model: str | None, adapter: Path | None) -> dict[str, Any]:
    """What a side's weights are: model as named, its local path, the weights' and the adapter's sha256."""
    path = local_path(model)
    weights = Path(adapter) / "adapters.safetensors" if adapter else None
    return {
        "model": model,
        "model_path": str(path) if path else None,
        "weights_sha256": weights_sha256(path),
        "adapter": str(adapter) if adapter else None,
        "adapter_sha256": sha256_file(weights) if weights and weights.is_file() else None,
    }


def listed_models(base_url: str, api_key: str | None = None) -> list[str]:
    """The model ids of `base_url`/models. mlx_lm server answers 200 with an empty body when the Hugging Face
    cache directory does not exist (its scan raises after the headers went out): for a server on this machine
    that directory, the one huggingface_hub creates on a first download, is created and the listing retried."""
    import httpx

    url = f"{base_url.rstrip('/')}/models"
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    try:
        response = httpx.get(url, headers=headers, timeout=30)
        if response.status_code == 200 and not response.content and create_missing_hub_cache(base_url):
            response = httpx.get(url, headers=headers, timeout=30)
        response.raise_for_status()
    except httpx.HTTPError as error:
        raise EvalError(f"{url}: cannot list the served models ({error})") from None
    try:
        return [str(entry["id"]) for entry in response.json()["data"]]
    except (ValueError, KeyError, TypeError):
        answer = repr(response.text[:80]) if response.content else "an empty body"
        raise EvalError(f"{url}: answered {answer}, not a model list; cannot tell what it serves") from None


def create_missing_hub_cache(base_url: str) -> bool:
    """Create this machine's Hugging Face hub cache directory if `base_url` is local and it is missing."""
    from urllib.parse import urlsplit

    from huggingface_hub import constants

    cache = Path(constants.HF_HUB_CACHE)
    if urlsplit(base_url).hostname not in ("127.0.0.1", "localhost", "::1") or cache.is_dir():
        return False
    cache.mkdir(parents=True, exist_ok=True)
    return True


def served_model(base_url: str, requested: str, listed: list[str]) -> str:
    """The model `requested` reaches at `base_url`, from its /v1/models answer `listed` (see the module doc)."""
    shown = ", ".join(listed[:6]) + (", …" if len(listed) > 6 else "") or "nothing"
    if requested != DEFAULT_ALIAS and requested in listed:
        return requested
    if requested != DEFAULT_ALIAS:
        raise EvalError(f"{base_url} serves no model named {requested!r} (/v1/models lists {shown})")
    paths = [entry for entry in listed if Path(entry).is_absolute()]
    if len(paths) != 1:
        why = "no local model path" if not paths else "several local model paths"
        raise EvalError(
            f"{base_url}: cannot tell which model {DEFAULT_ALIAS!r} is: /v1/models lists {shown} ({why}); "
            "pass --server-model NAME"
        )
    return paths[0]


def same_model(served: str, named: str) -> bool:
    served_path, named_path = local_path(served), local_path(named)
    if served_path and named_path:
        return served_path == named_path
    return served == named


def verify_server(
    base_url: str, requested: str, named: str | None, api_key: str | None = None
) -> dict[str, Any]:
    """Check that `base_url` serves `named` (when the report names a model) under the name `requested`;
    EvalError otherwise. Returns what was found, and the `model` names responses may carry."""
    listed = listed_models(base_url, api_key)
    served = served_model(base_url, requested, listed)
    if named is not None and not same_model(served, named):
        raise EvalError(
            f"{base_url} serves {served}, not {named} (the model the report would name); refusing to score it"
        )
    return {
        "server": base_url,
        "requested_model": requested,
        "served_model": served,
        "listed_models": listed,
        "response_models": sorted({requested, served}),
    }


def side_identity(side, requested: str, api_key: str | None) -> dict[str, Any]:
    """A side's identity (`identity`); for a server side, verified first (`verify_server`)."""
    if not side.server:
        return identity(side.model, side.adapter)
    found = verify_server(side.server, requested, side.model, api_key)
    return {**identity(side.model or found["served_model"], None), **found}


def check_episode_models(episodes: list[dict], allowed: list[str], base_url: str) -> None:
    """Every response of every episode named an allowed model, or EvalError naming the first that did not."""
    for episode in episodes:
        wrong = [model for model in episode.get("models", []) if model not in allowed]
        if wrong:
            raise EvalError(
                f"{base_url}: a response to episode {episode['task_id']} names model {wrong[0]!r}, "
                f"not {' or '.join(allowed)} (what was verified); refusing to score it"
            )
