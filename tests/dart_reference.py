"""DART's selection written the way its reference code does it, for tests to compare horizon against.

Independent of horizon's ``dart_keep``: it sees the prompt as the reference
does (one contiguous image span ``start .. start + length``; text candidates
are everything after the span), takes keys as a KV-cache tensor
(1, kv_heads, S, head_dim), uses ``topk``, ``cosine_similarity`` and Python
sets, and visits the pivots in the iteration order of the set of their
positions.
"""

from __future__ import annotations

import torch


def reference_dart(keys: torch.Tensor, normed: torch.Tensor, start: int, length: int, budget: int,
                   pivot_image: int = 4, pivot_text: int = 4) -> tuple[list[int], list[int], list[int]]:
    """(kept visual positions sorted, visual pivots, text pivots) for one prompt.

    ``keys``: (1, kv_heads, S, head_dim) keys of the layer before the pruning
    layer; ``normed``: (S, D) hidden states entering the pruning layer after the
    model's final norm; the image is positions ``start .. start + length - 1``.
    """
    seq = keys.shape[2]
    per_token = keys[0].permute(1, 0, 2).reshape(seq, -1).float()
    l1 = torch.linalg.vector_norm(per_token, ord=1, dim=-1)
    end = start + length
    image_pivots = (l1[start:end].topk(pivot_image).indices + start).tolist()
    text_pivots = (l1[end:].topk(min(pivot_text, seq - end)).indices + end).tolist()
    per_pivot = budget // (pivot_image + pivot_text)
    chosen = set(image_pivots + text_pivots)
    remaining = set(range(start, end)) - set(image_pivots)
    for pivot in list(chosen):
        candidates = list(remaining)
        similarity = torch.nn.functional.cosine_similarity(normed[pivot].float()[None], normed[candidates].float())
        picked = [candidates[i] for i in (-similarity).topk(per_pivot).indices.tolist()]
        chosen.update(picked)
        remaining.difference_update(picked)
    return sorted(chosen - set(text_pivots)), image_pivots, text_pivots
