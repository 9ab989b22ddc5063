"""Templates: chat layouts for training and serving, and prompts for augmentation, all Jinja2."""

from tuneforge.templates.chat_template import IGNORE_INDEX, ChatTemplate, Declaration, Rendering
from tuneforge.templates.loader import (
    TemplateError,
    load_prompt,
    prompt_source,
    render,
    render_prompt,
    render_string,
)
from tuneforge.templates.registry import get_template, list_templates

__all__ = [
    "IGNORE_INDEX",
    "ChatTemplate",
    "Declaration",
    "Rendering",
    "TemplateError",
    "get_template",
    "list_templates",
    "load_prompt",
    "prompt_source",
    "render",
    "render_prompt",
    "render_string",
]
