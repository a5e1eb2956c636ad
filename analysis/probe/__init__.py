"""Gap probe: can a linear read-out of the model's attention tell, at each line of the modified copy,
whether one or more original lines are missing right before it? (Lookback-Lens style: Chuang et al.
2024 feed per-head "lookback ratios" to a logistic regression.)

The attention analysis asks whether the *answer* looks at the gap. This asks whether the information
is there at all while the model reads the modified copy: if a probe finds gaps that the answers miss, the
failure is in the read-out, not in perception.

Rows: one per probed line of the modified copy (the modified document) of every instance: each line
that has text of its own (blank lines have no tokens). Query: the line's first token, run on the
evaluation prompt inside the chat template exactly as lm-eval sends it (`attention.tokenize_prompt`).

Features at that query, per layer x head (`STATISTICS`):

* ``original``       – attention mass on the whole original document;
* ``matching``       – mass on the original line this modified copy line is a copy of;
* ``expected_next``  – mass on the original line that should come next after the previous modified copy
  line (the first missing line when there is a gap; the matching line itself when there is none);
* ``lookback_ratio`` – Lookback Lens' ratio: mean attention per original-document token over that plus
  the mean per token of the modified copy so far (up to and including the query); 0.5 when both are 0.

``matching`` and ``expected_next`` are placed by the gold alignment, so they are not available to a
model reading a document cold, and where there is no gap they are the same tokens (equal values); the
``label_free`` feature set (``original`` and ``lookback_ratio`` only) needs no alignment and is
reported beside the full ``attention`` set. With ``--hidden-layer N [N ...]`` a set ``hidden_N`` per
layer is the residual stream after layer N at the same query; ``hidden_0`` (the embedding of the query
token alone, no context) is the control for what the line's own first token gives away. The
``position`` set (where the line sits: its index over the modified copy's length, and the modified copy
tokens so far) is the control for what a probe can find from position alone: a random model's
attention is mostly a function of position, and so is part of the label's structure.

Label: 1 when one or more original lines are missing right before the line (the line is the first
non-blank line after a gap; `attention.find_gaps`). A gap at the very end of the modified copy has no
line after it and gives no positive row (counted in the summary). Placeholder variant: the gap is
visible, and the ``<missing line>`` line itself is the positive row (its matching line is the line
it stands for). Needle instances are skipped: their modified copy has extra lines, none missing.

The probe: standardised features, scikit-learn ``LogisticRegression(class_weight="balanced")``,
out-of-fold scores from ``GroupKFold`` by instance (no instance in two folds); AUROC and average
precision with percentile bootstrap CIs over instances; transfer between domains (fit on one, test on
each other) and, with several ``--models``, between models (fit on model A's features of the training
folds, score model B's features of the held-out fold); the largest standardised coefficients of a probe
fitted on all rows (top heads).

With several ``--models``, each later model's AUROC is compared with the first one's on the same rows
(``model_differences``: the difference with a paired bootstrap CI over instances and a bootstrap p-value):
whether gaps are more readable after training. With ``--answers LABEL=DIR`` (the model's lm-eval
``--log_samples`` output on the same instances) the probe meets the answers (`readout`): per instance the
within-instance AUROC of the out-of-fold probe scores (readability) against the answer's F1 (Spearman's rho,
bootstrap CI), and per gap line whether the probe finds it (top g of its instance, g its gap lines) and
whether the answer names it; found but not named is a read-out failure.

Memory: one instance at a time; the prompt up to the last probed line is run in chunks, and a hook on
each layer's attention reduces the rows of the probed queries to their span masses at once, so only
one layer's attention over one chunk exists at a time.

Outputs (``--out DIR``, written only when everything has run): ``auroc.png`` (AUROC per domain and
model, with CIs), ``coefficients.png`` (the probe's coefficients as layer x head heatmaps) and
``summary.json`` (written last); with ``--answers`` also ``readout.png`` (readability against F1).
"""
