"""One Jinja2 loader for every template: chat templates, augmentation prompts and users' own files.

Everything renders in a `SandboxedEnvironment` with `StrictUndefined`: a user template cannot reach Python
internals, and a missing variable is an error that names it instead of an empty string in the data. A
template is untrusted work too: one render may take `MAX_SECONDS` and produce `MAX_CHARS` characters (strings,
lists, numbers and filter widths it builds included); past either it is a `TemplateLimit` naming the limit, so
a recipe's document template turns that record into a reject instead of hanging or exhausting memory.
"""

from __future__ import annotations

import functools
import json
import re
import signal
import threading
import time
from pathlib import Path
from typing import Any

import jinja2
import jinja2.ext
import jinja2.nodes
from jinja2.sandbox import ImmutableSandboxedEnvironment, SandboxedEnvironment

from tuneforge.common.errors import TuneforgeError

PACKAGE_DIR = Path(__file__).parent
PROMPTS_DIR = PACKAGE_DIR / "prompts"
CHAT_DIR = PACKAGE_DIR / "chat"


MAX_SECONDS = 2.0  # one render of one template
MAX_CHARS = 1_000_000  # its output, and any string, list or number (in digits) it builds


class TemplateError(TuneforgeError):
    """A template failed to load or render; the message names the template and the cause."""


class TemplateLimit(TemplateError):
    """A render went past MAX_SECONDS or MAX_CHARS."""


_RENDER = threading.local()  # this thread's render deadline (None outside a render)


def _check_time() -> None:
    deadline = getattr(_RENDER, "deadline", None)
    if deadline is not None and time.monotonic() > deadline:
        raise TemplateLimit(f"rendering took over {MAX_SECONDS:g} s (the limit for one template)")


def _check_size(value: Any, what: str = "a value") -> Any:
    if isinstance(value, str | bytes | list | tuple | dict) and len(value) > MAX_CHARS:
        raise TemplateLimit(f"{what} of {len(value):,} items is over the limit of {MAX_CHARS:,}")
    if isinstance(value, int) and value.bit_length() > MAX_CHARS * 3.33:
        raise TemplateLimit(f"{what} is a number of over {MAX_CHARS:,} digits")
    return value


def _check_args(args: tuple, kwargs: dict) -> None:
    for a in (*args, *kwargs.values()):
        if isinstance(a, int) and not isinstance(a, bool) and abs(a) > MAX_CHARS:
            raise TemplateLimit(f"an argument of {a:,} is over the limit of {MAX_CHARS:,}")


def _limited_filter(fn: Any) -> Any:
    """A filter whose widths and counts are bounded and whose result is checked (`center(10**10)`)."""
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        _check_time()
        _check_args(args[1:], kwargs)
        return _check_size(fn(*args, **kwargs), "a filter's result")
    return wrapper


class _Limits:
    """The sandbox's hooks (attribute reads, calls, `*` and `**`) also keep each render within the limits."""

    intercepted_binops = frozenset({"*", "**", "+"})

    def _limit_filters(self) -> None:
        self.filters = {k: _limited_filter(f) for k, f in self.filters.items()}  # type: ignore[attr-defined]

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        _check_time()
        if operator == "**" and isinstance(left, int) and isinstance(right, int) and right > 0 \
                and abs(left) > 1 and left.bit_length() * right > MAX_CHARS * 3.33:
            raise TemplateLimit(f"{left} ** {right} is a number of over {MAX_CHARS:,} digits")
        if operator == "*":
            for seq, n in ((left, right), (right, left)):
                if isinstance(seq, str | bytes | list | tuple) and isinstance(n, int) and len(seq) * n > MAX_CHARS:
                    raise TemplateLimit(f"repeating {len(seq):,} items {n:,} times is over the limit of "
                                        f"{MAX_CHARS:,}")
        return _check_size(super().call_binop(context, operator, left, right),  # type: ignore[misc]
                           f"the result of {operator!r}")

    def getattr(self, obj: Any, attribute: str) -> Any:
        _check_time()
        return _check_size(super().getattr(obj, attribute))  # type: ignore[misc]

    def getitem(self, obj: Any, argument: Any) -> Any:
        _check_time()
        return _check_size(super().getitem(obj, argument))  # type: ignore[misc]

    def call(__self, __context: Any, __obj: Any, *args: Any, **kwargs: Any) -> Any:
        _check_time()
        _check_args(args, kwargs)
        return _check_size(super().call(__context, __obj, *args, **kwargs), "a call's result")  # type: ignore[misc]


def _clocked(iterable: Any) -> Any:
    """Every `{% for %}` iterates through this filter: the clock is checked as the loop runs, so nested loops that
    call nothing stop at the time limit on any thread (the SIGALRM timer exists only on the main thread)."""
    for i, item in enumerate(iterable):
        if not i & 1023:
            _check_time()
        yield item


CLOCKED = "tuneforge_clocked"


class LimitedSandbox(_Limits, SandboxedEnvironment):
    """The sandbox for documents and prompts, bounded in time and size."""

    def _parse(self, source: str, name: str | None, filename: str | None) -> jinja2.nodes.Template:
        """Every `{% for x in seq %}` is compiled as `for x in seq|tuneforge_clocked`."""
        tree = super()._parse(source, name, filename)
        for loop in tree.find_all(jinja2.nodes.For):
            loop.iter = jinja2.nodes.Filter(loop.iter, CLOCKED, [], [], None, None, lineno=loop.lineno)
        return tree


def make_env(search: list[Path] | None = None) -> SandboxedEnvironment:
    env = LimitedSandbox(
        loader=jinja2.FileSystemLoader([str(p) for p in (search or [])]) if search else None,
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        autoescape=False,
    )
    env.filters["tojson_zh"] = _tojson_zh
    env._limit_filters()
    env.filters[CLOCKED] = _clocked  # after the wrapping: a generator needs no size check
    return env


class _Alarm(BaseException):
    """SIGALRM inside a render (a loop with no call or attribute read to check the clock)."""


def _on_alarm(signum: int, frame: Any) -> None:
    raise _Alarm


def _bounded(produce: Any) -> str:
    """Run a render under the limits: the clock checked at every hook and output chunk; on the main thread
    (a process worker, the serial runner) also a timer, for loops that call nothing."""
    _RENDER.deadline = time.monotonic() + MAX_SECONDS
    timer = threading.current_thread() is threading.main_thread() and signal.getitimer(signal.ITIMER_REAL)[0] == 0
    old = signal.signal(signal.SIGALRM, _on_alarm) if timer else None
    if timer:
        signal.setitimer(signal.ITIMER_REAL, MAX_SECONDS + 0.5)
    try:
        out: list[str] = []
        size = 0
        for chunk in produce():
            size += len(chunk)
            if size > MAX_CHARS:
                raise TemplateLimit(f"the output is over the limit of {MAX_CHARS:,} characters")
            out.append(chunk)
            _check_time()
        return "".join(out)
    except _Alarm:
        raise TemplateLimit(f"rendering took over {MAX_SECONDS:g} s (the limit for one template)") from None
    except (MemoryError, OverflowError, RecursionError) as e:
        raise TemplateLimit(f"{type(e).__name__}: {e}"[:300]) from None
    finally:
        if timer:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, old)
        _RENDER.deadline = None


def _tojson_zh(value: Any, indent: int | None = None) -> str:
    return json.dumps(value, ensure_ascii=False, indent=indent)


def _resolve_prompt(name_or_path: str | Path) -> Path:
    p = Path(name_or_path)
    if p.suffix and p.is_file():
        return p
    candidate = PROMPTS_DIR / f"{name_or_path}.jinja"
    if candidate.is_file():
        return candidate
    known = sorted(q.stem for q in PROMPTS_DIR.glob("*.jinja"))
    raise TemplateError(f"prompt template {str(name_or_path)!r} not found (not a file, and not one of: "
                        f"{', '.join(known) or 'none'})")


def load_prompt(name_or_path: str | Path) -> jinja2.Template:
    """A packaged prompt by name (`templates/prompts/<name>.jinja`) or a user's template file, sandboxed."""
    path = _resolve_prompt(name_or_path)
    env = make_env([path.parent])
    try:
        return env.get_template(path.name)
    except jinja2.TemplateSyntaxError as e:
        raise TemplateError(f"{path}: line {e.lineno}: {e.message}") from None


def prompt_source(name_or_path: str | Path) -> str:
    """The template's text, for hashing into cache keys (a changed prompt is a new cache entry)."""
    return _resolve_prompt(name_or_path).read_text(encoding="utf-8")


def render(template: jinja2.Template, /, **variables: Any) -> str:
    name = template.name or "<string>"
    try:
        return _bounded(lambda: template.generate(**variables))
    except TemplateLimit as e:
        raise TemplateLimit(f"template {name}: {e}") from None
    except jinja2.UndefinedError as e:
        raise TemplateError(f"template {name}: {e.message} (pass it as a variable)") from None
    except jinja2.exceptions.SecurityError as e:
        raise TemplateError(f"template {name}: blocked by the sandbox: {e}") from None


def render_string(source: str, /, **variables: Any) -> str:
    """Render template text (a recipe's inline template) in the sandbox."""
    try:
        template = make_env().from_string(source)
    except jinja2.TemplateSyntaxError as e:
        raise TemplateError(f"inline template: line {e.lineno}: {e.message}") from None
    return render(template, **variables)


def render_prompt(name_or_path: str | Path, /, **variables: Any) -> str:
    return render(load_prompt(name_or_path), **variables)


# ---------------------------------------------------------------- chat templates
# Chat templates render with the same whitespace rules as transformers' `apply_chat_template`
# (trim_blocks, lstrip_blocks) so an exported template renders the same text there. Assistant replies are
# wrapped in `{% generation %}` (the tag transformers uses for assistant masks); here the tag brackets its
# output with two Unicode noncharacters, which `split_spans` turns into character offsets.

SPAN_OPEN = "\ufdd0"
SPAN_CLOSE = "\ufdd1"


class _TemplateRaise(Exception):
    """`raise_exception(...)` inside a chat template."""


def _raise_exception(message: str) -> None:
    raise _TemplateRaise(message)


class GenerationSpans(jinja2.ext.Extension):
    """`{% generation %}...{% endgeneration %}`: marks the text a model is trained to produce."""

    tags = frozenset({"generation"})

    def parse(self, parser: Any) -> jinja2.nodes.Node:
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return jinja2.nodes.CallBlock(self.call_method("_mark"), [], [], body).set_lineno(lineno)

    def _mark(self, caller: Any) -> str:
        return SPAN_OPEN + caller() + SPAN_CLOSE


def make_chat_env() -> SandboxedEnvironment:
    """Immutable like transformers' chat-template sandbox: a template cannot modify the messages it reads."""
    env = ImmutableSandboxedEnvironment(
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        autoescape=False,
        extensions=[GenerationSpans, jinja2.ext.loopcontrols],
    )
    env.globals["raise_exception"] = _raise_exception
    env.filters["tojson"] = _tojson_hf
    return env


def _tojson_hf(value: Any, ensure_ascii: bool = False, indent: int | None = None,
               separators: tuple[str, str] | None = None, sort_keys: bool = False) -> str:
    """transformers' chat-template `tojson` (no HTML escaping), so exported templates agree."""
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def split_spans(marked: str, name: str) -> tuple[str, list[tuple[int, int]]]:
    """Remove the generation markers; return the plain text and the (start, end) offsets they enclosed."""
    out: list[str] = []
    spans: list[tuple[int, int]] = []
    pos, start = 0, None
    for piece in _split_keep(marked):
        if piece == SPAN_OPEN:
            if start is not None:
                raise TemplateError(f"template {name}: nested {{% generation %}} blocks")
            start = pos
        elif piece == SPAN_CLOSE:
            if start is None:
                raise TemplateError(f"template {name}: unbalanced {{% generation %}} block")
            spans.append((start, pos))
            start = None
        else:
            out.append(piece)
            pos += len(piece)
    return "".join(out), spans


def _split_keep(text: str) -> list[str]:
    return [p for p in re.split(f"([{SPAN_OPEN}{SPAN_CLOSE}])", text) if p]


def compile_chat(source: str, name: str) -> jinja2.Template:
    try:
        return make_chat_env().from_string(source)
    except jinja2.TemplateSyntaxError as e:
        raise TemplateError(f"chat template {name}: line {e.lineno}: {e.message}") from None


def render_chat(template: jinja2.Template, name: str, /, **variables: Any) -> tuple[str, list[tuple[int, int]]]:
    """Render a chat template in the sandbox; return the text and the spans of its generation blocks."""
    try:
        marked = template.render(**variables)
    except _TemplateRaise as e:
        raise TemplateError(f"template {name}: {e}") from None
    except jinja2.UndefinedError as e:
        raise TemplateError(f"template {name}: {e.message} (pass it as a variable)") from None
    except jinja2.exceptions.SecurityError as e:
        raise TemplateError(f"template {name}: blocked by the sandbox: {e}") from None
    except jinja2.TemplateError as e:
        raise TemplateError(f"template {name}: {e}") from None
    return split_spans(marked, name)
