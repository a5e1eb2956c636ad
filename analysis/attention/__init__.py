"""Attention-to-gap analysis: do the answer-side positions of a model look at where something is missing?

AbsenceBench explains models' failure to list omitted lines by attention: a transformer attends to
keys, and an omission leaves no key behind. This package measures it (`positions`: where the gaps
are, in tokens; `measure`: the ratio and the run; `figures`; `cli`). For every instance it runs the
checkpoint with eager attention over the *evaluation* prompt (`render_prompt`, inside the tokenizer's
chat template exactly as lm-eval's ``--apply_chat_template`` sends it) and records, per layer and head,
the attention mass that the answer-side query positions put on two sets of prompt tokens:

* ``flank``   – the tokens flanking each gap in the document that lacks the line: the last token of
  the line before the gap and the first token of the line after it (blank neighbours are skipped:
  they have no tokens of their own). In the placeholder variant the gap is visible, so the set is the
  placeholder's tokens instead.
* ``omitted`` – the tokens of the missing line itself in the document that still has it.

For omission / placeholder instances the document that lacks the line is the modified one and the
line is in the original. Needle instances are the mirror image, and are measured as such: the
inserted line is absent from the *original* document, so ``flank`` is the pair of original-document
tokens around the place where it was inserted, and ``omitted`` is the inserted line's tokens in the
modified document.

The answer-side queries are the last prompt token (the position that emits the first answer token)
and, with ``--generate``, every greedily generated token that emits a further one. A measure's mass
is averaged over these queries. The **gap-attention ratio** divides it by the mass the same queries
put on an equal number of random tokens of the same document (the gap document for ``flank``, the
other one for ``omitted``; the measured tokens themselves are avoided while the document has enough
others), averaged over several seeded draws: 1.0 means no preference for the gap, above 1 means the
head looks there. Ratios are averaged as logarithms (geometric means over heads and over instances): a
head whose random baseline got almost no attention has a ratio in the thousands, which an arithmetic
mean would let outweigh everything else.

Memory stays bounded by one layer's attention over a chunk of the prompt: the prompt minus its last
token is prefilled in chunks into the KV cache without returning attentions, and only the answer-side
queries are then run with ``output_attentions=True``, so each layer hands back just a
``[heads, 1, keys]`` row, which is reduced to the four masses (and, for strip figures, the row over
the gap document) at once.

Outputs (``--out DIR``): ``summary.json`` (written last), ``heatmap_<domain>.png``, and
``strip_<instance id>.png`` for the first ``--strips`` instances of each domain; ``--compare DIR ... --out DIR``
draws ``comparison.png`` (and ``comparison.json``) from several earlier runs on one colour scale.
"""
