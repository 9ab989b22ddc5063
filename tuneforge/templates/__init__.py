"""Templates: chat layouts for training and serving, and prompts for augmentation, all Jinja2."""

from tuneforge.templates.loader import (
    TemplateError,
    load_prompt,
    prompt_source,
    render,
    render_prompt,
    render_string,
)

__all__ = ["TemplateError", "load_prompt", "prompt_source", "render", "render_prompt", "render_string"]
