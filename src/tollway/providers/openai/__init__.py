"""The ``openai`` upstream kind: Anthropic Messages in front, Chat Completions behind."""
