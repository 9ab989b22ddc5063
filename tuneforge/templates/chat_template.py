"""A chat template: one Jinja2 layout plus its declaration, rendered to text, prompt/completion or masked ids.

The template marks what the model is trained to produce with `{% generation %}` blocks (the tag transformers
uses for assistant masks). Rendering keeps those blocks as character spans; `tokenize` turns the spans into
labels through the tokenizer's offset mapping, so masks never depend on pieces re-tokenizing the same way.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from tuneforge.common.records import ROLES
from tuneforge.templates.loader import SPAN_CLOSE, SPAN_OPEN, TemplateError, compile_chat, render_chat

IGNORE_INDEX = -100
Span = tuple[int, int]


@dataclass(frozen=True)
class Rendering:
    """Rendered text and the (start, end) character spans of each trainable reply, in order."""

    text: str
    spans: list[Span]


@dataclass
class Declaration:
    """What a template file cannot say by itself: stops, default system, end of turn, provenance."""

    name: str
    template: str
    description: str = ""
    source: str = ""
    default_system: str | None = None
    eot: str = ""
    reply_prefix: str = ""
    stop_strings: list[str] = field(default_factory=list)
    trainable_roles: list[str] = field(default_factory=lambda: ["assistant"])
    tools: bool = False
    rounds: bool = False  # question/answer rounds: a user turn must open and turns must alternate
    special_tokens: list[str] = field(default_factory=list)
    vars: dict[str, Any] = field(default_factory=dict)


def check_messages(messages: Any, name: str) -> list[dict]:
    """The canonical message list, or a TemplateError saying which turn is wrong."""
    if not isinstance(messages, list):
        raise TemplateError(f"template {name}: messages should be a list of {{role, content}}, "
                            f"got {type(messages).__name__}")
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or "role" not in m or "content" not in m:
            raise TemplateError(f"template {name}: messages[{i}] should be a dict with role and content")
        if m["role"] not in ROLES:
            raise TemplateError(f"template {name}: messages[{i}] has role {m['role']!r}; "
                                f"expected one of {', '.join(ROLES)}")
        if not isinstance(m["content"], str):
            raise TemplateError(f"template {name}: messages[{i}].content should be text")
        if m["role"] == "system" and i != 0:
            raise TemplateError(f"template {name}: messages[{i}] is a system turn; only the first turn may be")
        if SPAN_OPEN in m["content"] or SPAN_CLOSE in m["content"]:
            raise TemplateError(f"template {name}: messages[{i}] contains a Unicode noncharacter "
                                "(U+FDD0/U+FDD1) reserved for marking replies")
    return messages


def check_rounds(messages: list[dict], name: str) -> None:
    """Round layouts (ChatGLM, Alpaca, Vicuna...) have a slot for a question and then its answer: a
    conversation that opens with the assistant, or has two turns of one role in a row, would need an invented
    turn, so it is refused instead."""
    turns = [m["role"] for m in messages if m["role"] != "system"]
    for i, role in enumerate(turns):
        want = "user" if i % 2 == 0 else "assistant"
        if role != want:
            raise TemplateError(f"template {name}: rounds need alternating user/assistant turns starting with "
                                f"the user; turn {i + 1} is {role}")


class ChatTemplate:
    """A registered or user-supplied chat layout (see `get_template`)."""

    def __init__(self, decl: Declaration, source: str):
        self.decl = decl
        self.source = source
        self._compiled = compile_chat(source, decl.name)

    # ------------------------------------------------------------ declaration
    @property
    def name(self) -> str:
        return self.decl.name

    @property
    def description(self) -> str:
        return self.decl.description

    @property
    def default_system(self) -> str | None:
        return self.decl.default_system

    @property
    def stop_strings(self) -> list[str]:
        stops = list(self.decl.stop_strings)
        eot = self.decl.eot.strip()
        if eot and eot not in stops:
            stops.insert(0, eot)
        return stops

    def _variables(self) -> dict[str, Any]:
        return {**self.decl.vars, "default_system": self.decl.default_system, "eot": self.decl.eot}

    # ------------------------------------------------------------ rendering
    def render_spans(self, messages: list[dict], add_generation_prompt: bool = False) -> Rendering:
        messages = check_messages(messages, self.name)
        if self.decl.rounds:
            check_rounds(messages, self.name)
        text, spans = render_chat(self._compiled, self.name, messages=messages,
                                  add_generation_prompt=add_generation_prompt, **self._variables())
        trainable = [m for m in messages if m["role"] in self.decl.trainable_roles]
        if len(spans) != len(trainable):
            raise TemplateError(f"template {self.name}: marked {len(spans)} trainable replies with "
                                f"{{% generation %}} but the conversation has {len(trainable)} "
                                f"{'/'.join(self.decl.trainable_roles)} turns")
        return Rendering(text, spans)

    def render(self, messages: list[dict], add_generation_prompt: bool = False) -> str:
        """The full text the model sees (and, with add_generation_prompt, the cue for its next reply)."""
        return self.render_spans(messages, add_generation_prompt).text

    def render_prompt_completion(self, messages: list[dict]) -> tuple[str, str]:
        """Everything before the last assistant reply, and that reply with its end-of-turn."""
        if not messages or messages[-1].get("role") != "assistant":
            raise TemplateError(f"template {self.name}: prompt/completion needs a conversation that ends "
                                "with an assistant reply")
        r = self.render_spans(messages)
        start, end = r.spans[-1]
        return r.text[:start], r.text[start:end]

    # ------------------------------------------------------------ tokens
    def tokenize(self, tokenizer: Any, messages: list[dict], train_on: str = "all",
                 max_length: int | None = None) -> dict[str, list[int]]:
        """input_ids, attention_mask and labels (-100 outside the trained replies), from token offsets."""
        from tuneforge.templates.masking import labels_from_spans

        if train_on not in ("all", "last"):
            raise TemplateError(f"train_on should be 'all' or 'last', got {train_on!r}")
        r = self.render_spans(messages)
        spans = r.spans[-1:] if train_on == "last" else r.spans
        return labels_from_spans(tokenizer, r.text, spans, max_length=max_length, name=self.name)

    def missing_special_tokens(self, tokenizer: Any) -> list[str]:
        """Markers this layout relies on that the tokenizer would split into pieces."""
        vocab = tokenizer.get_vocab()
        added = set(getattr(tokenizer, "all_special_tokens", [])) | set(tokenizer.get_added_vocab())
        return [t for t in self.decl.special_tokens if t not in added or t not in vocab]

    def add_special_tokens(self, tokenizer: Any) -> list[str]:
        """Register the missing markers as special tokens (the trainer must then resize embeddings)."""
        missing = self.missing_special_tokens(tokenizer)
        if missing:
            tokenizer.add_tokens(missing, special_tokens=True)
        return missing

    # ------------------------------------------------------------ export
    def to_hf_chat_template(self) -> str:
        """A `chat_template` for transformers: `apply_chat_template` then renders exactly `render`."""
        prelude = "".join(f"{{%- set {k} = {json.dumps(v, ensure_ascii=False)} -%}}\n"
                          for k, v in self._variables().items())
        return prelude + self.source

    def __getstate__(self) -> dict:
        # compiled Jinja2 code does not pickle; recompile on load (datasets.map with num_proc pickles us)
        return {k: v for k, v in self.__dict__.items() if k != "_compiled"}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        if not isinstance(self, TokenizerTemplate):
            self._compiled = compile_chat(self.source, self.decl.name)

    def __repr__(self) -> str:
        return f"ChatTemplate({self.name!r})"


class TokenizerTemplate(ChatTemplate):
    """The model's own `chat_template`, rendered by transformers; reply spans found by prefix rendering."""

    def __init__(self, tokenizer: Any):
        template = getattr(tokenizer, "chat_template", None)
        if not template or not isinstance(template, str):
            raise TemplateError("template 'tokenizer': this tokenizer has no chat_template; pick a registered "
                                "template instead (tuneforge templates list)")
        eos = tokenizer.eos_token or ""
        self.tokenizer = tokenizer
        self.decl = Declaration(name="tokenizer", template="<tokenizer.chat_template>",
                                description=f"the chat_template of {getattr(tokenizer, 'name_or_path', '?')}",
                                source="tokenizer.chat_template", eot=eos,
                                stop_strings=[eos] if eos else [])
        self.source = template

    def _apply(self, messages: list[dict], add_generation_prompt: bool) -> str:
        try:
            out = self.tokenizer.apply_chat_template(messages, tokenize=False,
                                                     add_generation_prompt=add_generation_prompt)
        except Exception as e:  # the tokenizer's template raised: surface it with our name
            raise TemplateError(f"template tokenizer: {type(e).__name__}: {e}") from None
        return out if isinstance(out, str) else out[0]

    def render_spans(self, messages: list[dict], add_generation_prompt: bool = False) -> Rendering:
        messages = check_messages(messages, self.name)
        text = self._apply(messages, add_generation_prompt)
        spans: list[Span] = []
        for i, m in enumerate(messages):
            if m["role"] != "assistant":
                continue
            spans.append(self._reply_span(messages, i, text))
        return Rendering(text, spans)

    def _reply_span(self, messages: list[dict], i: int, full: str) -> Span:
        prompt = self._apply(messages[:i], add_generation_prompt=True)
        if not full.startswith(prompt):
            raise TemplateError("template tokenizer: rendering the conversation up to reply "
                                f"{i} is not a prefix of the full rendering; this chat_template rewrites history, "
                                "so its replies cannot be masked from offsets; pick a registered template")
        content = messages[i]["content"]
        at = full.find(content, len(prompt))
        if at < 0 or full[len(prompt):at].strip():
            raise TemplateError(f"template tokenizer: reply {i} does not follow its prompt verbatim in the "
                                "rendering (the chat_template alters it); pick a registered template")
        end = at + len(content)
        eos = self.decl.eot
        rest = full[end:]
        if eos and rest.lstrip(" ").startswith(eos):
            end += len(rest) - len(rest.lstrip(" ")) + len(eos)
        return len(prompt), end

    def to_hf_chat_template(self) -> str:
        return self.source

    def missing_special_tokens(self, tokenizer: Any) -> list[str]:
        return []
