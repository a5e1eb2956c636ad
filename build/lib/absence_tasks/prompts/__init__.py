"""Render prompts from the Jinja templates in this folder — the only place prompt text lives.

Evaluation (lm-eval `doc_to_text`) and training (trainers.data) both call `render_prompt`, so a model
is trained on exactly the text it is evaluated on. The answer a model should give is the gold lines,
one per line (`render_answer`).
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import jinja2

from absence_tasks.schema import DOMAINS, PLACEHOLDER, VARIANTS, Instance

TEMPLATE_DIR = Path(__file__).parent


@lru_cache(maxsize=1)
def _environment() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATE_DIR),
        undefined=jinja2.StrictUndefined,
        autoescape=False,
        keep_trailing_newline=False,
    )


def template_name(domain: str, variant: str) -> str:
    if domain not in DOMAINS:
        raise ValueError(f"unknown domain {domain!r} (expected one of {', '.join(DOMAINS)})")
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r} (expected one of {', '.join(VARIANTS)})")
    return f"{domain}_{variant}.jinja"


def render_documents(domain: str, variant: str, original: str, modified: str) -> str:
    """The prompt for two documents given as text (used by `render_prompt`)."""
    template = _environment().get_template(template_name(domain, variant))
    return template.render(original=original, modified=modified, placeholder=PLACEHOLDER).strip() + "\n"


def render_prompt(instance: Instance) -> str:
    """The full prompt (instruction, both documents, question), ending in a newline."""
    return render_documents(instance.domain, instance.variant, instance.original_text, instance.modified_text)


def render_answer(instance: Instance) -> str:
    """The reference answer: the gold lines in document order, one per line."""
    return "\n".join(instance.answer_lines)
