"""Render prompts from the Jinja templates in this folder — the only place prompt text lives.

Evaluation (lm-eval `doc_to_text`) and training (trainers.data) both call `render_prompt`, so a model
is trained on exactly the text it is evaluated on. The answer a model should give is the gold lines,
one per line (`render_answer`); a model trained with a scratchpad first walks the document inside
`<think>…</think>` (`render_scratchpad`), which the scorer strips.
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


# A scratchpad line names a document line by its first characters: enough to find it again, few tokens.
SCRATCHPAD_PREFIX_CHARS = 24
SCRATCHPAD_PRESENT = "present"


def render_scratchpad(instance: Instance) -> str:
    """A walk through the document the answer comes from (the original; for needle, the modified copy), one
    line per line that has text: its first characters, then whether it is `present` in the other document
    or `MISSING` (needle: `INSERTED`). Each decision comes right after the line is named, so the model
    only has to find that line in the other document, where a plain answer must find what is *not* there."""
    if instance.variant == "needle":
        pool, marked, mark = instance.modified_lines, set(instance.inserted_indices), "INSERTED"
    else:
        pool, marked, mark = instance.original_lines, set(instance.omitted_indices), "MISSING"
    walk = [f"{line.strip()[:SCRATCHPAD_PREFIX_CHARS].rstrip()} -> "
            f"{mark if index in marked else SCRATCHPAD_PRESENT}" for index, line in enumerate(pool) if line.strip()]
    return "<think>\n" + "\n".join(walk) + "\n</think>"


def render_answer(instance: Instance, scratchpad: bool = False) -> str:
    """The reference answer: the gold lines in document order, one per line; with `scratchpad`, after the
    walk of `render_scratchpad`."""
    answer = "\n".join(instance.answer_lines)
    return f"{render_scratchpad(instance)}\n{answer}" if scratchpad else answer
