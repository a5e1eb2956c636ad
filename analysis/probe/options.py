"""What one probe run is: the checkpoints, the data, and the probe's settings (the CLI's flags, one field each)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class ProbeOptions:
    models: dict[str, str]  # label -> local checkpoint directory; several: one architecture, with transfer
    data: str
    out: str
    n: int | None = None  # at most N instances per domain, in file order
    domain: str | None = None  # the domain of an upstream AbsenceBench file
    hidden_layer: tuple[int, ...] = ()  # also probe the hidden state after these layers (0 = the embedding)
    no_chat_template: bool = False
    folds: int = 5  # grouped cross-validation folds (by instance)
    C: float = 1.0  # inverse L2 strength of the logistic regression
    seed: int = 0  # of the bootstrap
    bootstrap: int = 1000
    top_heads: int = 10
    prefill_chunk: int = 256  # prompt tokens per forward step (bounds the eager attention memory)
    # label -> lm-eval --log_samples output of that model on the same instances (the read-out comparison)
    answers: dict[str, str] = field(default_factory=dict)
    readout_features: str = "attention"  # the feature set whose probe scores the read-out uses

    def __post_init__(self) -> None:
        checks = [(bool(self.models), "no model to probe"),
                  (self.n is None or self.n >= 1, "--n must be at least 1"),
                  (self.folds >= 2, "--folds must be at least 2"),
                  (self.bootstrap >= 10, "--bootstrap must be at least 10"),
                  (self.C > 0, "--C must be positive"),
                  (self.top_heads >= 1, "--top-heads must be at least 1"),
                  (all(layer >= 0 for layer in self.hidden_layer), "--hidden-layer must not be negative"),
                  (len(set(self.hidden_layer)) == len(self.hidden_layer), "--hidden-layer lists a layer twice"),
                  (self.prefill_chunk >= 1, "--prefill-chunk must be at least 1"),
                  (self.readout_features in {"attention", "label_free", "position",
                                             *(f"hidden_{layer}" for layer in self.hidden_layer)},
                   f"--readout-features {self.readout_features}: not a feature set of this run"),
                  (set(self.answers) <= set(self.models),
                   f"--answers names a model that is not probed: {sorted(set(self.answers) - set(self.models))}")]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)
