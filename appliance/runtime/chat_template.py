"""A generator's chat template, checked at import: present, and renders a conversation.

The engine formats every request with the model's own template (``tokenizer.chat_template``
in the GGUF, Jinja2), so a generator without one, or with one that does not render, would
fail on the first question instead of at the officer's import. The check renders a user
turn (and a system plus user turn, which some templates refuse: then the engine folds the
system text into the user turn) in a sandbox, with the globals llama.cpp's formatter gives.
"""

from __future__ import annotations

import datetime as dt

__all__ = ["template_problem", "TEMPLATE_KEY"]

TEMPLATE_KEY = "tokenizer.chat_template"
PROBE = "Which room is the kiosk in? 7f3c"  # the marker must come out in the rendered prompt


def template_problem(template: object) -> str | None:
    """Why ``template`` cannot format the appliance's requests, or None if it can."""
    if not isinstance(template, str) or not template.strip():
        return f"it has no chat template ({TEMPLATE_KEY} is missing or empty)"
    import jinja2
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message: str) -> None:
        raise jinja2.TemplateError(message)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, loader=jinja2.BaseLoader())
    env.globals.update(raise_exception=raise_exception,
                       strftime_now=lambda fmt: dt.datetime.now(dt.UTC).strftime(fmt))
    try:
        compiled = env.from_string(template)
        text = compiled.render(messages=[{"role": "user", "content": PROBE}], add_generation_prompt=True,
                               bos_token="<s>", eos_token="</s>", tools=None)
    except jinja2.TemplateSyntaxError as exc:
        return f"its chat template does not parse: {exc.message} (line {exc.lineno})"
    except Exception as exc:  # noqa: BLE001 - a template may raise anything; all of it is a refusal
        return f"its chat template does not render a user turn: {type(exc).__name__}: {exc}"
    if PROBE not in text:
        return "its chat template renders a user turn without the user's text"
    return None
