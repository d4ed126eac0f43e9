"""LLM judges for the initial alignment (paper section 3.1): prompts, parser, cache, backends on Ray Data."""
