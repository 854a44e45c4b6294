"""Chat backends: anything that maps a list of conversations to one reply string each.

:class:`TransformersChatBackend` runs a local Hugging Face model; :class:`OpenAICompatibleBackend` talks to a vLLM,
TGI or SGLang server. A plain function is a backend too (tests use canned replies).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any, Protocol, runtime_checkable

from trl_ext.curriculum.offline_variants.prompts import Messages


@runtime_checkable
class ChatBackend(Protocol):
    """A generation backend: ``backend(conversations) -> texts``, one reply per conversation, in order.

    ``conversations`` is a list of chat conversations, each a list of ``{"role": ..., "content": str}`` messages
    (a system message, then one user message). Any callable with this signature is a backend, including a plain
    function.
    """

    def __call__(self, conversations: list[Messages]) -> list[str]: ...


class TransformersChatBackend:
    """A local Hugging Face chat model: ``tokenizer.apply_chat_template`` + ``model.generate``, batched.

    Conversations are rendered with the tokenizer's chat template (with the generation prompt), sorted by length,
    left-padded into batches of ``batch_size`` and decoded without special tokens; replies come back in input order.
    Sampling uses ``temperature`` (``0`` = greedy) and ``top_p``; ``seed`` seeds torch once at construction, so a
    run is reproducible on the same hardware.

    Args:
        model_name_or_path: a Hub id or a local checkpoint of a causal LM with a chat template (an *instruct* model).
        max_new_tokens: reply length limit, in tokens (default 1024).
        temperature: sampling temperature; ``0`` for greedy decoding (default 0.7).
        top_p: nucleus sampling (default 0.95; ignored when greedy).
        batch_size: conversations per ``generate`` call (default 16).
        device: ``"cuda"``, ``"cuda:1"``, ``"cpu"``, ...; default CUDA when available, else CPU.
        dtype: passed to ``from_pretrained`` (default ``"auto"``: the checkpoint's dtype).
        trust_remote_code: passed to ``from_pretrained``.
        seed: torch seed (``None`` to leave the RNG alone).
    """

    def __init__(
        self,
        model_name_or_path: str,
        max_new_tokens: int = 1024,
        temperature: float = 0.7,
        batch_size: int = 16,
        device: str | None = None,
        *,
        top_p: float = 0.95,
        dtype: Any = "auto",
        trust_remote_code: bool = False,
        seed: int | None = 0,
    ) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        if not isinstance(max_new_tokens, int) or max_new_tokens < 1:
            raise ValueError(f"`max_new_tokens` must be a positive integer, got {max_new_tokens!r}")
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"`batch_size` must be a positive integer, got {batch_size!r}")
        if temperature < 0:
            raise ValueError(f"`temperature` must be >= 0, got {temperature!r}")
        self.model_name_or_path = str(model_name_or_path)
        self.max_new_tokens = max_new_tokens
        self.temperature = float(temperature)
        self.top_p = float(top_p)
        self.batch_size = batch_size
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        if seed is not None:
            torch.manual_seed(seed)
        self.tokenizer = AutoTokenizer.from_pretrained(
            self.model_name_or_path, padding_side="left", trust_remote_code=trust_remote_code
        )
        if not getattr(self.tokenizer, "chat_template", None):
            raise ValueError(
                f"TransformersChatBackend: the tokenizer of {self.model_name_or_path!r} has no chat template; "
                "use an instruct/chat model"
            )
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.model = AutoModelForCausalLM.from_pretrained(
            self.model_name_or_path, dtype=dtype, trust_remote_code=trust_remote_code
        ).to(self.device)
        self.model.eval()

    def __repr__(self) -> str:
        return f"TransformersChatBackend({self.model_name_or_path!r}, device={self.device!r})"

    def _render(self, messages: Messages) -> str:
        """The prompt text of one conversation; system messages are folded into the first user message for chat
        templates that reject the system role (Gemma's, for instance)."""
        messages = list(messages)
        try:
            return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        except Exception:
            system = "\n\n".join(str(m["content"]) for m in messages if m.get("role") == "system")
            rest = [dict(m) for m in messages if m.get("role") != "system"]
            if not system or not rest:
                raise
            rest[0]["content"] = f"{system}\n\n{rest[0]['content']}"
            return self.tokenizer.apply_chat_template(rest, tokenize=False, add_generation_prompt=True)

    def __call__(self, conversations: list[Messages]) -> list[str]:
        """One reply per conversation, in input order."""
        import torch

        texts = [self._render(messages) for messages in conversations]
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        replies: list[str] = [""] * len(texts)
        sampling: dict[str, Any] = (
            {"do_sample": True, "temperature": self.temperature, "top_p": self.top_p}
            if self.temperature > 0
            else {"do_sample": False}
        )
        for start in range(0, len(order), self.batch_size):
            chunk = order[start : start + self.batch_size]
            encoded = self.tokenizer(
                [texts[i] for i in chunk], return_tensors="pt", padding=True, add_special_tokens=False
            ).to(self.device)
            with torch.inference_mode():
                output = self.model.generate(
                    **encoded,
                    max_new_tokens=self.max_new_tokens,
                    pad_token_id=self.tokenizer.pad_token_id,
                    **sampling,
                )
            new_tokens = output[:, encoded["input_ids"].shape[1] :]
            for i, reply in zip(chunk, self.tokenizer.batch_decode(new_tokens, skip_special_tokens=True)):
                replies[i] = reply
        return replies

    generate = __call__


class OpenAICompatibleBackend:
    """A chat model behind an OpenAI-compatible server (vLLM, TGI, SGLang, ...): ``POST {base_url}/v1/chat/completions``.

    Each conversation is one request; up to ``max_concurrency`` requests are in flight at once (servers such as vLLM
    batch them). Connection errors, timeouts, HTTP 429 and 5xx are retried ``max_retries`` times with exponential
    backoff (``retry_backoff``, doubled each time); other HTTP errors fail at once. Either way the error names the URL.
    A reply whose ``content`` is null gives ``""``.

    Args:
        base_url: the server root, e.g. ``http://localhost:8000`` (a trailing ``/v1`` is accepted too).
        model: the model name the server expects (``vllm serve NAME`` -> ``NAME``).
        api_key: sent as ``Authorization: Bearer ...`` when given.
        timeout: seconds per request (default 300).
        max_retries: retries after the first attempt (default 3).
        temperature, top_p, max_tokens: sampling parameters of every request (defaults 0.7, 0.95, 1024).
        max_concurrency: parallel requests (default 8).
        retry_backoff: the first retry's delay in seconds (default 1.0).
        extra_body: extra JSON fields merged into every request (e.g. ``{"seed": 0}``).
    """

    def __init__(
        self,
        base_url: str,
        model: str,
        api_key: str | None = None,
        timeout: float = 300.0,
        max_retries: int = 3,
        *,
        temperature: float = 0.7,
        top_p: float = 0.95,
        max_tokens: int = 1024,
        max_concurrency: int = 8,
        retry_backoff: float = 1.0,
        extra_body: Mapping[str, Any] | None = None,
    ) -> None:
        if not isinstance(base_url, str) or not base_url.strip():
            raise ValueError("`base_url` must be a non-empty URL such as 'http://localhost:8000'")
        if not isinstance(model, str) or not model.strip():
            raise ValueError("`model` must name the served model")
        if not isinstance(max_retries, int) or max_retries < 0:
            raise ValueError(f"`max_retries` must be an integer >= 0, got {max_retries!r}")
        if not isinstance(max_concurrency, int) or max_concurrency < 1:
            raise ValueError(f"`max_concurrency` must be a positive integer, got {max_concurrency!r}")
        root = base_url.strip().rstrip("/")
        if root.endswith("/v1"):
            root = root[: -len("/v1")]
        self.url = f"{root}/v1/chat/completions"
        self.model = model
        self.api_key = api_key
        self.timeout = float(timeout)
        self.max_retries = max_retries
        self.max_concurrency = max_concurrency
        self.retry_backoff = float(retry_backoff)
        self.payload_defaults: dict[str, Any] = {
            "model": model,
            "temperature": float(temperature),
            "top_p": float(top_p),
            "max_tokens": int(max_tokens),
            **dict(extra_body or {}),
        }

    def __repr__(self) -> str:
        return f"OpenAICompatibleBackend(url={self.url!r}, model={self.model!r})"

    def _complete(self, messages: Messages) -> str:
        try:
            import requests
        except ImportError as error:  # pragma: no cover - requests ships with transformers' hub client
            raise ImportError("OpenAICompatibleBackend needs `requests`: pip install requests") from error

        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        payload = {**self.payload_defaults, "messages": list(messages)}
        attempts = self.max_retries + 1
        last_error = "no attempt made"
        for attempt in range(attempts):
            if attempt:
                time.sleep(self.retry_backoff * 2 ** (attempt - 1))
            try:
                response = requests.post(self.url, json=payload, headers=headers, timeout=self.timeout)
            except requests.RequestException as error:
                last_error = f"{type(error).__name__}: {error}"
                continue
            if response.status_code == 429 or response.status_code >= 500:
                last_error = f"HTTP {response.status_code}: {response.text[:300]}"
                continue
            if response.status_code >= 400:
                raise RuntimeError(
                    f"OpenAICompatibleBackend: POST {self.url} failed with HTTP {response.status_code} "
                    f"(model {self.model!r}): {response.text[:500]}"
                )
            try:
                content = response.json()["choices"][0]["message"].get("content")
            except (ValueError, KeyError, IndexError, TypeError, AttributeError) as error:
                raise RuntimeError(
                    f"OpenAICompatibleBackend: POST {self.url} returned an unexpected body "
                    f"({type(error).__name__}): {response.text[:500]}"
                ) from error
            return content if isinstance(content, str) else ""
        raise RuntimeError(
            f"OpenAICompatibleBackend: POST {self.url} failed after {attempts} attempt(s) "
            f"(max_retries={self.max_retries}); last error: {last_error}"
        )

    def __call__(self, conversations: list[Messages]) -> list[str]:
        """One reply per conversation, in input order."""
        conversations = list(conversations)
        if len(conversations) <= 1 or self.max_concurrency == 1:
            return [self._complete(messages) for messages in conversations]
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(max_workers=min(self.max_concurrency, len(conversations))) as pool:
            return list(pool.map(self._complete, conversations))

    generate = __call__


def _generate_fn(backend: Any) -> Callable[[list[Messages]], list[str]]:
    if callable(backend):
        return backend
    generate = getattr(backend, "generate", None)
    if callable(generate):
        return generate
    raise ValueError(
        f"`backend` must be a callable (conversations -> list of reply strings) or have a `generate` method, "
        f"got {type(backend).__name__}"
    )


def _backend_name(backend: Any) -> str:
    name = getattr(backend, "__qualname__", None) or getattr(backend, "__name__", None)
    if name is None:
        return repr(backend)
    module = getattr(backend, "__module__", None)
    return f"{module}.{name}" if module else name
