"""A loaded vision LLM (:class:`VisionLM`) and loading one by hub id or local directory, wrapped for nnsight."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from functools import cached_property
from typing import Any, Sequence

import torch
from nnsight import NNsight

from ..data import path_problem
from ..errors import HorizonError
from .adapter import Adapter, adapter_for

log = logging.getLogger("horizon")

DEVICE_MAPS = ("auto", "balanced", "balanced_low_0", "sequential")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise HorizonError(f"--device {device}: CUDA is not available on this machine")
    if device != "cpu" and not device.startswith("cuda"):
        raise HorizonError(f"--device must be cpu, cuda or auto, got {device!r}")
    return torch.device(device)


def resolve_dtype(dtype: str | torch.dtype, device: torch.device) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if dtype not in DTYPES:
        raise HorizonError(f"--dtype must be one of auto, {', '.join(DTYPES)}; got {dtype!r}")
    return DTYPES[dtype]


@dataclass
class VisionLM:
    """A loaded vision LLM: the transformers model, its nnsight wrapper, processor and adapter."""

    hf: torch.nn.Module
    nn: NNsight
    processor: Any
    adapter: Adapter
    source: str

    @property
    def device(self) -> torch.device:
        return next(self.hf.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.hf.parameters()).dtype

    def _get(self, root: Any, path: str) -> Any:
        for part in path.split("."):
            root = getattr(root, part)
        return root

    @property
    def language_model(self) -> torch.nn.Module:
        return self._get(self.hf, self.adapter.language_model_path())

    @property
    def lm_envoy(self) -> Any:
        """The decoder stack as an nnsight envoy (for tracing)."""
        return self._get(self.nn, self.adapter.language_model_path())

    @property
    def lm_head(self) -> torch.nn.Module:
        return self._get(self.hf, self.adapter.lm_head_path())

    @property
    def layers(self) -> torch.nn.ModuleList:
        """The decoder layers."""
        return self.adapter.decoder_layers(self.language_model)

    @property
    def n_layers(self) -> int:
        return len(self.layers)

    @property
    def tokenizer(self) -> Any:
        return getattr(self.processor, "tokenizer", self.processor)

    @cached_property
    def model_keys(self) -> dict[str, str]:
        """run.json's and eval.json's keys for this model (:func:`horizon.models.identity.model_keys`), found
        once per loaded model: a grid's every evaluation records them."""
        from .identity import model_keys

        return model_keys(self.source)

    @property
    def max_positions(self) -> int | None:
        """The most positions the language model was built for: its text config's ``max_position_embeddings``
        (None when the config does not say)."""
        limit = getattr(self.language_model.config, "max_position_embeddings", None)
        return int(limit) if isinstance(limit, int) and limit > 0 else None


def looks_local(text: str) -> bool:
    """Whether a --model value is meant as a local path: a hub id is ``name`` or ``org/name``."""
    return text.startswith(("./", "../", "/", "~", ".\\", "..\\")) or text.count("/") > 1 or "\\" in text


def model_source(model: str | Path) -> str:
    """``model`` as transformers should get it: a local directory (``~`` expanded) or a hub id.

    A local-looking path that is not there is refused as such (transformers
    would call it a malformed repo id), and a symbolic link loop or broken
    link is named as one (pathlib calls both "not there").
    """
    text = str(model)
    path = Path(text).expanduser()
    problem = path_problem(path)
    if problem is None:
        return str(path)
    if problem != "not found":
        raise HorizonError(f"model {text} {problem}")
    if isinstance(model, Path) or looks_local(text):
        raise HorizonError(f"model directory not found: {text} (no such directory)")
    return text


def _first_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[0] if lines else type(exc).__name__


def _refusal(source: str, exc: BaseException) -> HorizonError | None:
    """transformers' refusal to run a checkpoint's own code, said with horizon's options."""
    if "trust_remote_code" not in str(exc) and "custom code" not in str(exc):
        return None
    return HorizonError(f"{source}: the checkpoint ships its own Python code, which horizon does not run unless "
                        "asked; read that code, then pass --trust-remote-code (CLI) or trust_remote_code=True (API)")


def read_config(source: str | Path, trust_remote_code: bool = False) -> Any:
    """The checkpoint's transformers config (no weights), or a one-line HorizonError."""
    from transformers import AutoConfig

    source = model_source(source)
    try:
        return AutoConfig.from_pretrained(source, trust_remote_code=trust_remote_code)
    except OSError as exc:
        raise HorizonError(f"cannot load model config from {source!r}: {_first_line(exc)}") from None
    except ValueError as exc:
        raise _refusal(source, exc) or HorizonError(f"{source}: {_first_line(exc)}") from None


def refuse_extra_images(model: str | Path, samples: Sequence[Any], where: str,
                        trust_remote_code: bool = False) -> None:
    """Before any weights load: refuse data whose largest image count the model's family cannot take.

    Reads only the config (and only when some sample has several images), picks
    the adapter and lets it judge the sample with the most images.
    """
    most = max(samples, key=lambda s: len(s.images), default=None)
    if most is None or len(most.images) <= 1:
        return
    adapter = adapter_for(read_config(model, trust_remote_code))
    adapter.check_image_count(len(most.images), f"{where}: sample {most.id!r}")


TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "tekken.json")


def load_processor(adapter: Adapter, source: str, trust_remote_code: bool) -> Any:
    """The checkpoint's processor, or a one-line HorizonError naming what is missing."""
    try:
        return adapter.load_processor(source, trust_remote_code)
    except (OSError, ValueError, ImportError) as exc:
        if (refusal := _refusal(source, exc)) is not None:
            raise refusal from None
        local = Path(source)
        if local.is_dir() and not any((local / name).is_file() for name in TOKENIZER_FILES):
            raise HorizonError(f"{source}: no tokenizer files (none of {', '.join(TOKENIZER_FILES)}); copy the "
                               "checkpoint's tokenizer files into it") from None
        raise HorizonError(f"cannot load the processor (tokenizer and image processor) from {source!r}: "
                           f"{type(exc).__name__}: {_first_line(exc)}") from None


def _bad_safetensors(source: str) -> str | None:
    """The first .safetensors file of a local checkpoint that safetensors cannot open, or None."""
    from safetensors import SafetensorError, safe_open

    folder = Path(source)
    for path in sorted(folder.glob("*.safetensors")) if folder.is_dir() else []:
        try:
            with safe_open(path, framework="pt"):
                pass
        except (SafetensorError, OSError):
            return str(path)
    return None


def load(
    model: str | Path,
    *,
    dtype: str | torch.dtype = "auto",
    device: str = "auto",
    attn_implementation: str | None = "sdpa",
    trust_remote_code: bool = False,
    allow_unsafe_weights: bool = False,
    device_map: str | dict[str, Any] | None = None,
    offload_folder: str | Path | None = None,
) -> VisionLM:
    """Load a supported checkpoint (hub id or local directory).

    Weights are read from safetensors only unless ``allow_unsafe_weights``
    (pickle-based ``.bin`` files can run code). ``trust_remote_code`` is off
    unless asked for. ``dtype="auto"`` is bfloat16 on CUDA and float32 on CPU.

    ``device_map`` (``"auto"``, ``"balanced"``, ``"sequential"`` or an explicit
    ``{module name: device}``) spreads a model too large for one GPU over the
    machine's devices through accelerate's dispatch (transformers'
    ``device_map``); each layer then runs where its weights are, and horizon
    moves every tensor it hands a layer to that layer's device. ``device`` is
    then only used to choose the ``auto`` dtype. A map that sends modules to
    ``"disk"`` needs ``offload_folder`` (their weights are loaded from there
    on every use: slow, but it fits).
    """
    from transformers import AutoModelForImageTextToText

    source = model_source(model)
    dev = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, dev)
    if Path(source).exists() and not (Path(source) / "config.json").is_file():
        raise HorizonError(f"{source}: not a model directory (no config.json)")
    adapter = adapter_for(read_config(source, trust_remote_code))
    processor = load_processor(adapter, source, trust_remote_code)  # before the weights: a bad one fails fast
    kwargs: dict[str, Any] = dict(dtype=torch_dtype, trust_remote_code=trust_remote_code)
    if device_map is not None:
        if isinstance(device_map, str) and device_map not in DEVICE_MAPS:
            raise HorizonError(f"--device-map must be one of {', '.join(DEVICE_MAPS)} (or a module -> device mapping), "
                               f"got {device_map!r}")
        try:
            import accelerate  # noqa: F401  (transformers dispatches through it)
        except ImportError:
            raise HorizonError("--device-map needs accelerate: pip install accelerate") from None
        kwargs["device_map"] = device_map
        if offload_folder is not None:
            kwargs["offload_folder"] = str(offload_folder)
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    if not allow_unsafe_weights:
        kwargs["use_safetensors"] = True
    from safetensors import SafetensorError

    try:
        hf = AutoModelForImageTextToText.from_pretrained(source, **kwargs)
    except OSError as exc:
        first = _first_line(exc)
        hint = " (pickle weights need allow_unsafe_weights / --allow-unsafe-weights)" if "safetensors" in first else ""
        raise HorizonError(f"cannot load weights from {source!r}: {first}{hint}") from None
    except SafetensorError as exc:
        raise HorizonError(f"cannot load weights from {source!r}: {_bad_safetensors(source) or 'a .safetensors file'} "
                           f"is not a valid safetensors file ({_first_line(exc)}); it is truncated or corrupted: "
                           "download it again") from None
    except ValueError as exc:
        if (refusal := _refusal(source, exc)) is not None:
            raise refusal from None
        raise
    if device_map is None:
        hf.to(dev)
    hf.eval()
    where = f"device map {device_map!r}" if device_map is not None else str(dev)
    log.info("loaded %s (%s, %s, %s, attn=%s)", source, adapter.name, torch_dtype, where, hf.config._attn_implementation)
    return VisionLM(hf=hf, nn=NNsight(hf), processor=processor, adapter=adapter, source=source)
