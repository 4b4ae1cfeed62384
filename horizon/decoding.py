"""One decoding rule for every answer horizon generates.

``scan --target pred``, the ``clean_pred`` column and ``prune-eval`` all pick
each next token the same way (they share one generation loop), by one of two
rules:

* ``checkpoint`` (default): greedy under the checkpoint's own
  ``generation_config``. The logit processors that change which token is the
  most likely are applied as transformers' ``generate`` applies them
  (``repetition_penalty`` over the prompt and the answer so far,
  ``no_repeat_ngram_size``); sampling settings (``do_sample``,
  ``temperature``, ``top_p``, ``top_k``) are not, because the rule is greedy.
  This is what the official evaluators get when they call ``generate``
  without overriding the shipped config (Qwen2.5-VL ships
  ``repetition_penalty 1.05``; llava-hf's LLaVA-1.5 ships none).
* ``greedy``: the argmax of the raw logits, whatever the config says.

A generation config that asks for something greedy decoding cannot honour
(beam search, forced or suppressed tokens, ...) is refused in one line rather
than silently dropped. The rule and its parameters are recorded in run.json
and eval.json.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch

from .errors import HorizonError

DECODING_RULES = ("checkpoint", "greedy")

# generation_config fields that would change the greedy token but that horizon does not apply,
# with the value that means "off".
_UNSUPPORTED = {
    "num_beams": 1, "bad_words_ids": None, "suppress_tokens": None, "begin_suppress_tokens": None,
    "sequence_bias": None, "min_new_tokens": None, "min_length": 0, "forced_bos_token_id": None,
    "forced_eos_token_id": None, "exponential_decay_length_penalty": None, "encoder_repetition_penalty": 1.0,
    "encoder_no_repeat_ngram_size": 0,
}


@dataclass(frozen=True)
class Decoding:
    """How the next token is chosen: the rule and the logit processors it applies."""

    rule: str = "greedy"
    repetition_penalty: float = 1.0
    no_repeat_ngram_size: int = 0

    @classmethod
    def for_model(cls, model: torch.nn.Module, rule: "str | Decoding" = "checkpoint") -> "Decoding":
        """The rule ``rule`` resolved against ``model``'s generation config."""
        if isinstance(rule, Decoding):
            return rule
        if rule not in DECODING_RULES:
            raise HorizonError(f"decoding must be one of {', '.join(DECODING_RULES)}, got {rule!r}")
        if rule == "greedy":
            return cls("greedy")
        config = getattr(model, "generation_config", None)
        if config is None:
            return cls("checkpoint")
        for name, off in _UNSUPPORTED.items():
            value = getattr(config, name, off)
            if value is not None and value != off:
                raise HorizonError(f"the checkpoint's generation_config sets {name}={value!r}, which greedy decoding "
                                   "does not apply; decode with --decoding greedy (raw argmax) instead")
        return cls("checkpoint", float(getattr(config, "repetition_penalty", None) or 1.0),
                   int(getattr(config, "no_repeat_ngram_size", None) or 0))

    def processors(self) -> Any:
        from transformers import LogitsProcessorList, NoRepeatNGramLogitsProcessor, RepetitionPenaltyLogitsProcessor

        out = LogitsProcessorList()
        if self.repetition_penalty != 1.0:
            out.append(RepetitionPenaltyLogitsProcessor(self.repetition_penalty))
        if self.no_repeat_ngram_size > 0:
            out.append(NoRepeatNGramLogitsProcessor(self.no_repeat_ngram_size))
        return out

    def next_token(self, ids: torch.Tensor, logits: torch.Tensor, processors: Any = None) -> int:
        """The token chosen after ``ids`` (1, n): every token so far, prompt included; ``logits`` (V,)."""
        processors = self.processors() if processors is None else processors
        if processors:
            logits = processors(ids, logits.float()[None])[0]
        return int(logits.argmax())

    def record(self) -> dict[str, Any]:
        """What run.json / eval.json store."""
        return asdict(self)

    def describe(self) -> str:
        if self.rule == "greedy":
            return "greedy (raw argmax)"
        parts = [f"repetition_penalty {self.repetition_penalty:g}"] if self.repetition_penalty != 1.0 else []
        parts += [f"no_repeat_ngram_size {self.no_repeat_ngram_size}"] if self.no_repeat_ngram_size else []
        return "greedy under the checkpoint's generation config" + (f" ({', '.join(parts)})" if parts else "")
