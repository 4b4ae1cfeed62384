"""Image-only processors for families whose transformers processor needs torchvision.

transformers builds some processors (Qwen-VL's, Pixtral's) only where
torchvision is installed, although images alone do not need it: their image
processors have PIL variants. Such a family's adapter falls back to one of
these, assembled from the checkpoint's own tokenizer, image processor and
chat template, doing for images exactly what the transformers processor does:
run the image processor, expand each image placeholder to the tokens the
model expects, tokenize.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass, field
from typing import Any

from ..errors import HorizonError

log = logging.getLogger("horizon")


def image_processor_setting(processor: Any, name: str) -> Any:
    """Setting ``name`` of a processor's image processor: a size (transformers' ``SizeDict`` or a dict) as a
    dict without its unset keys, anything else as it is (None when absent)."""
    import dataclasses

    value = getattr(getattr(processor, "image_processor", processor), name, None)
    if dataclasses.is_dataclass(value):  # transformers' SizeDict
        value = dataclasses.asdict(value)
    return {k: v for k, v in value.items() if v is not None} if isinstance(value, dict) else value


def fallback_warning(family: str, exc: Exception) -> None:
    """One complete line: what failed (the exception's first sentence, never a cut URL) and what to do."""
    first = re.split(r"(?<=\.)\s", " ".join(str(exc).split()), maxsplit=1)[0]
    reason = first if first and "://" not in first else type(exc).__name__
    log.warning("%s: transformers could not build the %s processor (%s); using horizon's image-only processor "
                "instead (install torchvision to use the transformers one)", family, family, reason)


@dataclass
class ImageOnlyProcessor:
    """Tokenizer + image processor + chat template; subclasses expand the image placeholders."""

    tokenizer: Any
    image_processor: Any
    chat_template: str | None = None
    image_token: str = ""
    config: dict[str, Any] = field(default_factory=dict)  # the checkpoint's processor_config.json, if any

    @classmethod
    def from_pretrained(cls, source: str, trust_remote_code: bool = False):
        from transformers import AutoImageProcessor, AutoTokenizer
        from transformers.utils import cached_file

        tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=trust_remote_code)
        image_processor = AutoImageProcessor.from_pretrained(source, trust_remote_code=trust_remote_code)
        template = None
        for name in ("chat_template.jinja", "chat_template.json"):
            path = cached_file(source, name, _raise_exceptions_for_missing_entries=False)
            if path:
                with open(path, encoding="utf-8") as fh:
                    template = fh.read() if name.endswith("jinja") else json.load(fh)["chat_template"]
                break
        path = cached_file(source, "processor_config.json", _raise_exceptions_for_missing_entries=False)
        config = json.loads(open(path, encoding="utf-8").read()) if path else {}
        image_token = config.get("image_token") or getattr(tokenizer, "image_token", None) or cls.image_token
        return cls(tokenizer, image_processor, template or tokenizer.chat_template, image_token, config)

    def apply_chat_template(self, messages, add_generation_prompt=True, tokenize=False):
        return self.tokenizer.apply_chat_template(
            messages, chat_template=self.chat_template, add_generation_prompt=add_generation_prompt, tokenize=tokenize
        )

    def expand(self, images: list[Any], out: dict[str, Any]) -> list[str]:
        """The token text that replaces each image's placeholder; ``out`` holds the image processor's output."""
        raise NotImplementedError

    def process_images(self, images: list[Any]) -> dict[str, Any]:
        return dict(self.image_processor(images=images, return_tensors="pt"))

    def __call__(self, images=None, text="", return_tensors="pt"):
        out: dict[str, Any] = {}
        if images:
            out.update(self.process_images(images))
            pieces = text.split(self.image_token)
            if len(pieces) - 1 != len(images):
                raise HorizonError(f"prompt has {len(pieces) - 1} image placeholders for {len(images)} images")
            text = pieces[0] + "".join(tokens + rest for tokens, rest in zip(self.expand(images, out), pieces[1:]))
        out.update(self.tokenizer(text, return_tensors="pt"))
        return out

    def batch_decode(self, *args, **kwargs):
        return self.tokenizer.batch_decode(*args, **kwargs)


def without_video(processor_class: str) -> Any:
    """transformers' own ``processor_class`` for images only: built from the checkpoint's image processor and
    tokenizer, its video processor (which needs torchvision) left out.

    Every image is expanded by transformers' own code, so nothing about the
    image tokens is re-implemented; only video inputs are unavailable.
    """

    class ImageOnly:
        @staticmethod
        def from_pretrained(source: str, trust_remote_code: bool = False) -> Any:
            import transformers

            base = getattr(transformers, processor_class)
            cls = type(f"{processor_class}ImageOnly", (base,),
                       {"get_attributes": classmethod(lambda c: ["image_processor", "tokenizer"])})
            return cls.from_pretrained(source, trust_remote_code=trust_remote_code)

    ImageOnly.__name__ = f"{processor_class}ImageOnly"
    return ImageOnly
