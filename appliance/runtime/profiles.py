"""Model profiles: what the runtime needs to know about a generator, read from its GGUF.

A profile records the architecture, the context length the model was trained for, the chat
template (the GGUF's own, or a named family template the officer chose at import for a
GGUF that has none) and the stop markers that end an assistant turn. It is checked when the
model is imported: the template must render a conversation, and every stop marker must be
named in the template it ends. The engine formats every request with the profile's template
and stops at its markers, so a model of another family (Gemma, Llama 3, Qwen, Mistral) is
served the way it was trained.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from appliance.errors import ProfileError  # defined with every other error class
from appliance.runtime.chat_template import TEMPLATE_KEY, template_problem
from appliance.runtime.gguf_check import GGUFInfo

__all__ = ["FAMILY_TEMPLATES", "ModelProfile", "ProfileError", "profile_of", "stop_markers"]

# Templates for GGUFs that carry none, by family. The officer names one at import
# (`models import --template gemma`); it is never guessed.
FAMILY_TEMPLATES: dict[str, str] = {
    "chatml": ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
               "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"),
    # Gemma has no system role: the system text opens the first user turn, as Google's template does.
    "gemma": ("{{ bos_token }}{% set ns = namespace(system='') %}"
              "{% for m in messages %}{% if m['role'] == 'system' %}{% set ns.system = m['content'] + '\n\n' %}"
              "{% else %}<start_of_turn>{{ 'model' if m['role'] == 'assistant' else 'user' }}\n"
              "{% if m['role'] == 'user' %}{{ ns.system }}{% set ns.system = '' %}{% endif %}"
              "{{ m['content'] | trim }}<end_of_turn>\n{% endif %}{% endfor %}"
              "{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"),
    "llama3": ("{{ bos_token }}{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>\n\n"
               "{{ m['content'] | trim }}<|eot_id|>{% endfor %}"
               "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"),
}
# End-of-turn markers of the common template families; a template's stop markers are those it uses.
END_MARKERS = ("<|im_end|>", "<end_of_turn>", "<|eot_id|>", "<|end|>", "</s>", "<|endoftext|>")



@dataclass(frozen=True)
class ModelProfile:
    architecture: str
    context_length: int | None
    template: str
    template_source: str  # "gguf", or the family name the officer chose
    stop: tuple[str, ...]

    def as_dict(self) -> dict:
        return asdict(self)


def stop_markers(template: str) -> tuple[str, ...]:
    """The end-of-turn markers ``template`` writes after a turn."""
    return tuple(m for m in END_MARKERS if m in template)


def profile_of(info: GGUFInfo, template_name: str | None = None) -> ModelProfile:
    """The profile of a generator GGUF; ``template_name`` supplies a family template when it has none.

    Refused (ProfileError, one line): no template and none named; a named template when the
    GGUF has its own (the model's own wins, so none is overridden by mistake); an unknown
    family; a template that does not render a user turn."""
    own = info.get(TEMPLATE_KEY)
    if isinstance(own, str) and own.strip():
        if template_name:
            raise ProfileError(f"it has its own chat template; --template {template_name} would override it")
        template, source = own, "gguf"
    elif template_name:
        if template_name not in FAMILY_TEMPLATES:
            raise ProfileError(f"unknown template {template_name!r} (one of {', '.join(sorted(FAMILY_TEMPLATES))})")
        template, source = FAMILY_TEMPLATES[template_name], template_name
    else:
        raise ProfileError(f"it has no chat template ({TEMPLATE_KEY} is missing or empty); name its family with "
                           f"--template ({', '.join(sorted(FAMILY_TEMPLATES))}) if you know it")
    problem = template_problem(template)
    if problem:
        raise ProfileError(problem)
    ctx = info.get(f"{info.architecture}.context_length")
    return ModelProfile(architecture=info.architecture, context_length=int(ctx) if isinstance(ctx, int) else None,
                        template=template, template_source=source, stop=stop_markers(template))
