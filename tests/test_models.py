"""Checkpoints: the prepared SmolLM2 default, tiny random Llamas, and --model path validation.

Tests marked slow use the real SmolLM2 (the `smollm2_dir` fixture converts it once per machine, ~30 s,
and loading the GGUF again for the logits comparison takes ~15 s). The rebuild logic is tested on a tiny
GGUF written here, with a byte-level vocabulary small enough to load in about a second.
"""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, GgufConfig

from absence_tasks.models import (
    MARKER_NAME,
    find_embedded_gguf,
    load_checkpoint_or_die,
    prepare_embedded_model,
    tiny_llama_checkpoint,
    write_directory_atomically,
)

CHATML_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] "
    "+ '<|im_end|>\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def byte_alphabet() -> list[str]:
    """GPT-2's printable stand-ins for the 256 bytes: printable Latin-1 bytes stand for themselves, the
    others are shifted past 255 in byte order."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    stand_in = {}
    shifted = 0
    for byte in range(256):
        if byte in printable:
            stand_in[byte] = chr(byte)
        else:
            stand_in[byte] = chr(256 + shifted)
            shifted += 1
    return [stand_in[b] for b in range(256)]


def write_tiny_chatml_gguf(path: Path, *, seed: int) -> Path:
    """A one-layer Llama GGUF with a byte-level ChatML vocabulary and a single merge. Like the real
    file it mixes float32 tensors with quantized ones (the MLP, in Q8_0)."""
    from gguf import GGMLQuantizationType, GGUFWriter, TokenType, quants

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    tokens = specials + byte_alphabet() + ["is"]
    hidden, ffn, heads, kv_heads = 32, 64, 2, 1  # Q8_0 packs rows in blocks of 32
    kv_width = kv_heads * hidden // heads
    writer = GGUFWriter(path, "llama")
    writer.add_block_count(1)
    writer.add_context_length(128)
    writer.add_embedding_length(hidden)
    writer.add_feed_forward_length(ffn)
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv_heads)
    writer.add_rope_dimension_count(hidden // heads)
    writer.add_rope_freq_base(10000.0)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_vocab_size(len(tokens))
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list(tokens)
    writer.add_token_types([TokenType.CONTROL] * len(specials) + [TokenType.NORMAL] * (len(tokens) - len(specials)))
    writer.add_token_merges(["i s"])
    writer.add_unk_token_id(0)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_pad_token_id(2)
    writer.add_add_bos_token(False)
    writer.add_chat_template(CHATML_TEMPLATE)
    rng = np.random.default_rng(seed)
    shapes = {
        "token_embd.weight": (len(tokens), hidden), "output_norm.weight": (hidden,),
        "blk.0.attn_norm.weight": (hidden,), "blk.0.ffn_norm.weight": (hidden,),
        "blk.0.attn_q.weight": (hidden, hidden), "blk.0.attn_k.weight": (kv_width, hidden),
        "blk.0.attn_v.weight": (kv_width, hidden), "blk.0.attn_output.weight": (hidden, hidden),
        "blk.0.ffn_gate.weight": (ffn, hidden), "blk.0.ffn_up.weight": (ffn, hidden),
        "blk.0.ffn_down.weight": (hidden, ffn),
    }
    for name, shape in shapes.items():
        weights = (0.1 * rng.standard_normal(shape)).astype(np.float32)
        if ".ffn_" in name:
            writer.add_tensor(name, quants.quantize(weights, GGMLQuantizationType.Q8_0),
                              raw_dtype=GGMLQuantizationType.Q8_0)
        else:
            writer.add_tensor(name, weights)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory) -> Path:
    return write_tiny_chatml_gguf(tmp_path_factory.mktemp("gguf") / "tiny-chatml.gguf", seed=0)


def identity(path: Path) -> tuple[int, int]:
    """Changes whenever the file is rewritten (new inode or new mtime)."""
    st = path.stat()
    return st.st_ino, st.st_mtime_ns


def logits(model, input_ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids).logits


# ---- the real embedded SmolLM2 ----------------------------------------------------------------------

def test_embedded_gguf_is_found():
    gguf = find_embedded_gguf()
    assert gguf.name == "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert gguf.read_bytes()[:4] == b"GGUF"


@pytest.mark.slow
def test_prepared_checkpoint_gives_the_gguf_models_logits(smollm2_dir):
    gguf = find_embedded_gguf()
    tokenizer = AutoTokenizer.from_pretrained(smollm2_dir)
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "Which line is missing?\n1\n2\n4"}],
                                           add_generation_prompt=True, return_tensors="pt", return_dict=True)
    prepared = AutoModelForCausalLM.from_pretrained(smollm2_dir).eval()
    expected_logits = logits(prepared, prompt["input_ids"])
    del prepared
    from_gguf = AutoModelForCausalLM.from_pretrained(
        gguf.parent, gguf_file=gguf.name, dtype=torch.float32,
        quantization_config=GgufConfig(dequantize=True)).eval()
    gguf_logits = logits(from_gguf, prompt["input_ids"])
    assert gguf_logits.dtype == expected_logits.dtype == torch.float32
    assert torch.allclose(expected_logits, gguf_logits, rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_prepared_checkpoint_is_plain_float32_chatml(smollm2_dir):
    config = json.loads((smollm2_dir / "config.json").read_text())
    assert "quantization_config" not in config
    assert config["dtype"] == "float32"
    assert config["architectures"] == ["LlamaForCausalLM"]
    with torch.device("meta"):  # only the dtype is needed, not the 540 MB of weights
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(smollm2_dir))
    assert model.dtype == torch.float32

    tokenizer = AutoTokenizer.from_pretrained(smollm2_dir)
    text = "Lines 3 and 7 are missing:\n  return x  # naïve ✓"
    assert tokenizer.decode(tokenizer(text)["input_ids"]) == text
    end_of_turn = tokenizer.convert_tokens_to_ids("<|im_end|>")
    generation = json.loads((smollm2_dir / "generation_config.json").read_text())
    assert generation["eos_token_id"] == end_of_turn == tokenizer.eos_token_id
    assert tokenizer.model_max_length == config["max_position_embeddings"] == 8192
    chat = tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], add_generation_prompt=True,
                                         tokenize=False)
    assert chat.endswith("<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n")

    marker = json.loads((smollm2_dir / MARKER_NAME).read_text())
    assert marker["source_gguf"] == "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert len(marker["source_sha256"]) == 64


@pytest.mark.slow
def test_prepared_checkpoint_is_reused_without_reloading(smollm2_dir):
    marker_before = identity(smollm2_dir / MARKER_NAME)
    weights_before = identity(smollm2_dir / "model.safetensors")
    assert prepare_embedded_model(smollm2_dir) == smollm2_dir
    assert identity(smollm2_dir / MARKER_NAME) == marker_before
    assert identity(smollm2_dir / "model.safetensors") == weights_before


# ---- rebuild logic, on a tiny GGUF ------------------------------------------------------------------

def test_tiny_gguf_converts_to_a_checkpoint_with_the_same_logits(tiny_gguf, tmp_path):
    out = prepare_embedded_model(tmp_path / "ckpt", gguf=tiny_gguf)
    assert (out / MARKER_NAME).is_file()
    assert load_checkpoint_or_die(out).model_type == "llama"
    config = json.loads((out / "config.json").read_text())
    assert "quantization_config" not in config and config["dtype"] == "float32"
    ids = torch.tensor([[1, 40, 41, 42, 2]])
    prepared = AutoModelForCausalLM.from_pretrained(out)
    from_gguf = AutoModelForCausalLM.from_pretrained(tiny_gguf.parent, gguf_file=tiny_gguf.name,
                                                     dtype=torch.float32,
                                                     quantization_config=GgufConfig(dequantize=True))
    assert torch.allclose(logits(prepared, ids), logits(from_gguf, ids), rtol=1e-6, atol=1e-6)
    assert not list(tmp_path.glob(".ckpt.*")), "staging directories left behind"


def test_second_call_reuses_and_force_rebuilds(tiny_gguf, tmp_path):
    out = prepare_embedded_model(tmp_path / "ckpt", gguf=tiny_gguf)
    first = identity(out / MARKER_NAME)
    first_dir = out.stat().st_ino
    assert prepare_embedded_model(out, gguf=tiny_gguf) == out
    assert identity(out / MARKER_NAME) == first
    assert prepare_embedded_model(out, gguf=tiny_gguf, force=True) == out
    assert identity(out / MARKER_NAME) != first
    assert out.stat().st_ino != first_dir
    assert not list(tmp_path.glob(".ckpt.*")), "the replaced checkpoint was left behind"


def test_half_written_checkpoint_is_rebuilt(tiny_gguf, tmp_path):
    half = tmp_path / "ckpt"
    half.mkdir()
    (half / "config.json").write_text('{"model_type": "llama"}')
    (half / "model.safetensors").write_bytes(b"\x00" * 100)  # as if killed mid-write; no marker
    prepare_embedded_model(half, gguf=tiny_gguf)
    assert (half / MARKER_NAME).is_file()
    assert AutoModelForCausalLM.from_pretrained(half).config.hidden_size == 32


def test_checkpoint_from_another_gguf_is_rebuilt(tiny_gguf, tmp_path):
    out = prepare_embedded_model(tmp_path / "ckpt", gguf=tiny_gguf)
    other = write_tiny_chatml_gguf(tmp_path / "other.gguf", seed=1)
    before = identity(out / MARKER_NAME)
    prepare_embedded_model(out, gguf=other)
    assert identity(out / MARKER_NAME) != before
    assert json.loads((out / MARKER_NAME).read_text())["source_gguf"] == "other.gguf"


def test_directory_that_is_not_a_checkpoint_is_never_replaced(tiny_gguf, tmp_path):
    mine = tmp_path / "notes"
    mine.mkdir()
    (mine / "thesis.tex").write_text("precious")
    with pytest.raises(ValueError, match=r"notes: exists and holds files that are not part of a model "
                                         r"checkpoint \(thesis\.tex\)"):
        prepare_embedded_model(mine, gguf=tiny_gguf, force=True)
    assert (mine / "thesis.tex").read_text() == "precious"


def test_interrupted_write_leaves_the_old_directory_and_no_staging(tmp_path):
    out = tmp_path / "ckpt"
    out.mkdir()
    (out / "config.json").write_text("old")

    def fail_midway(staging: Path) -> None:
        (staging / "config.json").write_text("new")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        write_directory_atomically(out, fail_midway)
    assert (out / "config.json").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]


def test_missing_gguf_is_one_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nope\.gguf: no such GGUF file"):
        prepare_embedded_model(tmp_path / "ckpt", gguf=tmp_path / "nope.gguf")
    assert not (tmp_path / "ckpt").exists()


# ---- tiny random Llama ------------------------------------------------------------------------------

def test_tiny_llama_loads_and_generates(tiny_llama_dir):
    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(tiny_llama_dir)
    assert model.config.num_hidden_layers == 2 and model.config.hidden_size == 128
    assert model.config.hidden_size // model.config.num_attention_heads == 64  # vLLM CPU needs head_dim >= 64
    assert model.config.vocab_size == len(tokenizer) == 49152
    assert model.generation_config.eos_token_id == tokenizer.convert_tokens_to_ids("<|im_end|>")
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "What is missing?"}],
                                           add_generation_prompt=True, return_tensors="pt", return_dict=True)
    n_prompt = prompt["input_ids"].shape[1]
    output = model.generate(**prompt, max_new_tokens=3, min_new_tokens=3, do_sample=False)
    assert output.shape == (1, n_prompt + 3)


def test_tiny_llama_weights_depend_only_on_the_seed(tmp_path):
    rng_before = torch.random.get_rng_state()
    states = {name: AutoModelForCausalLM.from_pretrained(tiny_llama_checkpoint(tmp_path / name, seed=seed))
              .state_dict() for name, seed in (("a", 7), ("b", 7), ("c", 8))}
    assert torch.equal(torch.random.get_rng_state(), rng_before), "the global torch RNG was disturbed"
    assert states["a"].keys() == states["c"].keys()
    assert all(torch.equal(states["a"][k], states["b"][k]) for k in states["a"])
    assert not torch.equal(states["a"]["model.embed_tokens.weight"], states["c"]["model.embed_tokens.weight"])


def test_tiny_llama_can_take_its_vocabulary_from_another_checkpoint(tiny_gguf, tmp_path):
    byte_level = prepare_embedded_model(tmp_path / "byte-level", gguf=tiny_gguf)
    tiny = tiny_llama_checkpoint(tmp_path / "tiny", vocab_from=byte_level)
    assert AutoModelForCausalLM.from_pretrained(tiny).config.vocab_size == 260
    assert AutoTokenizer.from_pretrained(tiny).chat_template == CHATML_TEMPLATE


def test_lm_eval_hf_model_scores_with_the_tiny_llama(tiny_llama_dir):
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    lm = HFLM(pretrained=str(tiny_llama_dir), device="cpu", batch_size=1)
    request = Instance("loglikelihood", doc={}, arguments=("The missing line is", " 3"), idx=0)
    [(logprob, is_greedy)] = lm.loglikelihood([request])
    assert logprob < 0 and isinstance(is_greedy, bool)


# ---- validating --model paths -----------------------------------------------------------------------

def not_a_checkpoint(path: Path, reason: str) -> str:
    return rf"^{path}: not a Hugging Face model checkpoint \({reason}"


def test_load_checkpoint_or_die_accepts_a_checkpoint(tiny_llama_dir):
    config = load_checkpoint_or_die(tiny_llama_dir)
    assert config.model_type == "llama" and config.hidden_size == 128


@pytest.mark.parametrize("make, reason", [
    (lambda p: None, "no such directory"),
    (lambda p: p.write_text("weights?"), "not a directory"),
    (lambda p: p.mkdir(), "no config.json"),
    (lambda p: (p.mkdir(), (p / "config.json").write_text("{not json")), "config.json unreadable"),
    (lambda p: (p.mkdir(), (p / "config.json").write_text("{}")), "config.json unreadable"),
    (lambda p: (p.mkdir(), (p / "config.json").write_text('{"model_type": "llama"}')), "no weights"),
])
def test_load_checkpoint_or_die_rejects_non_checkpoints(tmp_path, make, reason):
    path = tmp_path / "model"
    make(path)
    with pytest.raises(ValueError, match=not_a_checkpoint(path, reason)) as error:
        load_checkpoint_or_die(path)
    assert "\n" not in str(error.value)


def test_load_checkpoint_or_die_wants_a_tokenizer(tiny_llama_dir, tmp_path):
    path = tmp_path / "weights-only"
    path.mkdir()
    for name in ("config.json", "model.safetensors"):
        (path / name).symlink_to(tiny_llama_dir / name)
    with pytest.raises(ValueError, match=not_a_checkpoint(path, "no tokenizer")):
        load_checkpoint_or_die(path)
