"""A loaded vision LLM (:class:`VisionLM`) and loading one by hub id or local directory, wrapped for nnsight."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch
from nnsight import NNsight

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


def read_config(source: str | Path, trust_remote_code: bool = False) -> Any:
    """The checkpoint's transformers config (no weights), or a one-line HorizonError."""
    from transformers import AutoConfig

    source = str(source)
    try:
        return AutoConfig.from_pretrained(source, trust_remote_code=trust_remote_code)
    except OSError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise HorizonError(f"cannot load model config from {source!r}: {first}") from None
    except ValueError as exc:
        raise HorizonError(f"{source}: {str(exc).splitlines()[0]}") from None


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

    source = str(model)
    dev = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, dev)
    if Path(source).exists() and not (Path(source) / "config.json").is_file():
        raise HorizonError(f"{source}: not a model directory (no config.json)")
    adapter = adapter_for(read_config(source, trust_remote_code))
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
    try:
        hf = AutoModelForImageTextToText.from_pretrained(source, **kwargs)
    except OSError as exc:
        first = str(exc).strip().splitlines()[0]
        hint = " (pickle weights need allow_unsafe_weights / --allow-unsafe-weights)" if "safetensors" in first else ""
        raise HorizonError(f"cannot load weights from {source!r}: {first}{hint}") from None
    if device_map is None:
        hf.to(dev)
    hf.eval()
    processor = adapter.load_processor(source, trust_remote_code)
    where = f"device map {device_map!r}" if device_map is not None else str(dev)
    log.info("loaded %s (%s, %s, %s, attn=%s)", source, adapter.name, torch_dtype, where, hf.config._attn_implementation)
    return VisionLM(hf=hf, nn=NNsight(hf), processor=processor, adapter=adapter, source=source)
