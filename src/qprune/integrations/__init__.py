"""Where qprune meets other tools: serving engines (vLLM). Each module imports its tool lazily."""
