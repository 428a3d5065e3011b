"""Switches for the differences between OpenAI-compatible servers, with defaults per server family.

Every ``kind = "openai"`` upstream has a family: given in the config, or guessed from its base URL, else
``generic``. The family sets each switch; any switch given in the config overrides it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Literal

MaxTokensField = Literal["max_tokens", "max_completion_tokens"]
ReasoningField = Literal["reasoning_content", "reasoning", "none"]
ReasoningRequest = Literal["reasoning_effort", "deepseek", "openrouter", "none"]
SchemaCleaning = Literal["none", "openai", "gemini"]

FAMILIES = ("openai", "deepseek", "openrouter", "vllm", "sglang", "ollama", "llamacpp", "lmstudio", "generic")


@dataclass(frozen=True, slots=True)
class OpenAIOptions:
    family: str = "generic"
    max_tokens_field: MaxTokensField = "max_tokens"
    """OpenAI's reasoning models refuse ``max_tokens`` and want ``max_completion_tokens``; Ollama reads only
    ``max_tokens``."""
    max_output_tokens: int | None = None
    """A cap on the ``max_tokens`` sent upstream (Claude Code asks for 32,000 for models it does not know)."""
    reasoning_field: ReasoningField = "reasoning_content"
    """How the thinking of earlier assistant turns is sent back (DeepSeek requires it after tool calls)."""
    reasoning_request: ReasoningRequest = "reasoning_effort"
    """How Anthropic's ``thinking`` is asked of the upstream."""
    schema_cleaning: SchemaCleaning = "none"
    """Tool-schema keywords to drop for strict validators (OpenAI's ``format`` allowlist, Gemini's subset)."""
    send_top_k: bool = False
    """OpenAI has no ``top_k`` and refuses unknown parameters; vLLM, SGLang, llama.cpp accept it."""
    max_stop_sequences: int | None = None
    """OpenAI takes at most 4 ``stop`` strings."""


FAMILY_DEFAULTS: dict[str, OpenAIOptions] = {
    "openai": OpenAIOptions("openai", "max_completion_tokens", None, "none", "reasoning_effort", "openai", False, 4),
    "deepseek": OpenAIOptions("deepseek", "max_tokens", 8192, "reasoning_content", "deepseek", "none", False, None),
    "openrouter": OpenAIOptions("openrouter", "max_tokens", None, "reasoning", "openrouter", "none", True, None),
    "vllm": OpenAIOptions("vllm", "max_tokens", None, "reasoning", "reasoning_effort", "none", True, None),
    "sglang": OpenAIOptions("sglang", "max_tokens", None, "reasoning_content", "reasoning_effort", "none", True, None),
    "ollama": OpenAIOptions("ollama", "max_tokens", None, "reasoning", "reasoning_effort", "none", False, None),
    "llamacpp": OpenAIOptions("llamacpp", "max_tokens", None, "reasoning_content", "reasoning_effort", "none", True,
                              None),
    "lmstudio": OpenAIOptions("lmstudio", "max_tokens", None, "reasoning_content", "none", "none", True, None),
    "generic": OpenAIOptions("generic", "max_tokens", None, "reasoning_content", "reasoning_effort", "none", False,
                             None),
}

_HOSTS = (("api.openai.com", "openai"), ("deepseek.com", "deepseek"), ("openrouter.ai", "openrouter"),
          (":11434", "ollama"), (":1234", "lmstudio"))


def guess_family(base_url: str) -> str:
    for marker, family in _HOSTS:
        if marker in base_url:
            return family
    return "generic"


def options_for(family: str, overrides: dict[str, object]) -> OpenAIOptions:
    """The family's defaults with the given switches replaced; names and values are checked by the caller."""
    return dataclasses.replace(FAMILY_DEFAULTS[family], **overrides)  # type: ignore[arg-type]
