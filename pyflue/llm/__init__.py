"""Model clients: the port (:mod:`.base`), adapters, and the registry that resolves model strings.

Model strings look like ``anthropic/claude-haiku-4-5`` or ``scripted/demo``.
"""

from __future__ import annotations

from typing import Protocol

from pyflue.errors import ModelNotFound
from pyflue.llm.base import ModelClient
from pyflue.settings import ModelSettings


class ModelResolver(Protocol):
    def resolve(self, model: str) -> tuple[ModelClient, str]:
        """The client for a model string and the provider's model id."""
        ...

    async def close(self) -> None: ...


def split_model(model: str) -> tuple[str, str]:
    provider, sep, model_id = model.partition("/")
    if not sep or not provider or not model_id:
        raise ModelNotFound(
            f"model {model!r} is not a model string: use provider/model-id, e.g. "
            "anthropic/claude-haiku-4-5 or scripted/demo"
        )
    return provider, model_id


class ModelRegistry:
    """Resolves ``anthropic/...`` to one shared Anthropic client and ``scripted/<name>`` to a
    built-in script (a fresh one per resolution)."""

    def __init__(self, settings: ModelSettings) -> None:
        self.settings = settings
        self._anthropic: ModelClient | None = None

    def resolve(self, model: str) -> tuple[ModelClient, str]:
        provider, model_id = split_model(model)
        if provider == "anthropic":
            return self._anthropic_client(), model_id
        if provider == "scripted":
            from pyflue.llm.scripted import builtin

            return builtin(model_id), model_id
        raise ModelNotFound(
            f"unknown model provider {provider!r} in {model!r}; "
            "supported: anthropic/<model-id>, scripted/demo"
        )

    def _anthropic_client(self) -> ModelClient:
        if self._anthropic is None:
            from pyflue.llm.anthropic import AnthropicClient

            key = self.settings.anthropic_api_key
            self._anthropic = AnthropicClient(
                key.get_secret_value() if key else None,
                base_url=self.settings.anthropic_base_url,
                max_retries=self.settings.anthropic_max_retries,
            )
        return self._anthropic

    async def close(self) -> None:
        if self._anthropic is not None:
            await self._anthropic.close()
            self._anthropic = None


class StaticModels:
    """Every model string resolves to one given client (tests, embedding a custom model)."""

    def __init__(self, client: ModelClient) -> None:
        self.client = client

    def resolve(self, model: str) -> tuple[ModelClient, str]:
        return self.client, split_model(model)[1] if "/" in model else model

    async def close(self) -> None:
        return None


__all__ = ["ModelRegistry", "ModelResolver", "StaticModels", "split_model"]
