"""The toy zoo: small vision LLMs that horizon trains itself on the synthetic tasks.

Each model is a real transformers checkpoint (LLaVA or Qwen2-VL architecture)
built by ``horizon.tiny`` with random weights, then trained from scratch --
vision tower, projector and language model together -- to answer the task
questions (loss on the answer tokens only). It is saved in the ordinary
Hugging Face format with a model card, and loads with ``horizon.load``.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from .tasks import CODE_LENGTH, COLOURS, QUESTIONS, SHAPES, TASKS, draw, random_scene
from .tiny import TinySpec, build_tiny

log = logging.getLogger("horizon")

TEST_SEED = 1234  # the shipped test sets; training draws from other seeds

CORPUS = tuple(
    [f"{q} {a}" for q in QUESTIONS.values() for a in (*COLOURS, *SHAPES)]
    + [" ".join(f"{i:02d}" for i in range(100))] * 6
    + ["USER: ASSISTANT: user assistant system"]
)


@dataclass
class ZooSpec:
    """Architecture and training recipe of one zoo model."""

    name: str
    arch: str  # llava | qwen2_vl | qwen2_5_vl
    layers: int
    hidden: int
    heads: int = 4
    vision_layers: int = 3
    vision_hidden: int = 96
    grid: int = 6  # visual tokens per side
    patch: int = 16  # LLaVA patch; Qwen-VL uses patch/2 with 2x2 merging
    steps: int = 1500
    batch: int = 32
    lr: float = 1e-3
    warmup: int = 100
    weight_decay: float = 0.01
    seed: int = 0
    tasks: tuple[str, ...] = TASKS
    ocr_share: float = 0.5  # fraction of each batch that asks for the code (the slow task to learn)
    aux_weight: float = 0.5  # auxiliary per-cell content loss on the visual features (0: off)

    def tiny_spec(self) -> TinySpec:
        qwen = self.arch.startswith("qwen")
        return TinySpec(arch=self.arch, layers=self.layers, hidden=self.hidden, heads=self.heads,
                        kv_heads=self.heads, grid=(self.grid, self.grid), vocab=420, seed=self.seed,
                        corpus=CORPUS, vision_layers=self.vision_layers, vision_hidden=self.vision_hidden,
                        patch=self.patch // 2 if qwen else self.patch)

    @property
    def image_size(self) -> int:
        return self.grid * self.patch


ZOO: dict[str, ZooSpec] = {
    spec.name: spec
    for spec in (
        ZooSpec("llava-s", "llava", layers=4, hidden=128),
        ZooSpec("llava-l", "llava", layers=12, hidden=128),
        ZooSpec("qwen2vl-s", "qwen2_vl", layers=6, hidden=128),
    )
}


@dataclass
class TrainResult:
    losses: list[float] = field(default_factory=list)
    accuracy: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0


AUX_CLASSES = 10 + len(COLOURS) + 1  # digit | shape colour | background


def cell_labels(scene, image, grid: int, cell: int) -> np.ndarray:
    """What each cell shows: its glyph (0-9), else the colour at its centre (10..), else background."""
    pixels = np.asarray(image)
    palette = {rgb: 10 + i for i, rgb in enumerate(COLOURS.values())}
    half = cell // 2
    label = np.array([[palette.get(tuple(int(v) for v in pixels[r * cell + half, c * cell + half]), AUX_CLASSES - 1)
                       for c in range(grid)] for r in range(grid)])
    r, c = scene.code_cell
    for i, digit in enumerate(scene.code):
        label[r, c + i] = int(digit)
    return label.reshape(-1)


def _batch(vlm, rng: np.random.Generator, spec: ZooSpec, tasks: Sequence[str]):
    """A training batch: prompts + answers, labels on the answer tokens (and end of turn)."""
    from .data import Sample
    from .scan import answer_ids_for

    tok = vlm.tokenizer
    eos = vlm.hf.generation_config.eos_token_id
    eos = eos[0] if isinstance(eos, list) else eos
    rows, cells = [], []
    others = [t for t in tasks if t != "ocr"] or list(tasks)
    for _ in range(spec.batch):
        ocr = "ocr" in tasks and rng.random() < spec.ocr_share
        task = "ocr" if ocr else others[int(rng.integers(len(others)))]
        scene = random_scene(rng, spec.image_size, spec.patch)
        image = draw(scene, spec.image_size, spec.patch)
        cells.append(cell_labels(scene, image, spec.grid, spec.patch))
        prompt = vlm.adapter.prompt(vlm.processor, QUESTIONS[task])
        enc = vlm.adapter.encode(vlm.processor, [image], prompt)
        sample = Sample("train", Path(), QUESTIONS[task], [scene.answer(task)], task)
        answer = answer_ids_for(vlm, sample, prompt) + [eos]
        rows.append((enc, answer))
    width = max(r[0]["input_ids"].shape[1] + len(r[1]) for r in rows)
    pad = tok.pad_token_id
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    labels = torch.full((len(rows), width), -100, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    mm = torch.zeros((len(rows), width), dtype=torch.long)
    for i, (enc, answer) in enumerate(rows):
        n = enc["input_ids"].shape[1]
        ids[i, :n] = enc["input_ids"][0]
        ids[i, n:n + len(answer)] = torch.tensor(answer)
        labels[i, n:n + len(answer)] = torch.tensor(answer)
        mask[i, :n + len(answer)] = 1
        if "mm_token_type_ids" in enc:
            mm[i, :n] = enc["mm_token_type_ids"][0]
    batch = {"input_ids": ids, "attention_mask": mask, "labels": labels}
    batch["pixel_values"] = torch.cat([r[0]["pixel_values"] for r in rows])
    if "image_grid_thw" in rows[0][0]:
        batch["image_grid_thw"] = torch.cat([r[0]["image_grid_thw"] for r in rows])
        batch["mm_token_type_ids"] = mm
    return batch, torch.tensor(np.stack(cells))


@torch.no_grad()
def evaluate(vlm, data: Path | str, limit: int | None = None, max_new_tokens: int = 4) -> float:
    """Greedy exact-match accuracy on a horizon JSONL (the README's Dataset file section) file."""
    from .data import read_jsonl
    from .scan import encode_sample, greedy_answer

    samples = read_jsonl(data)[:limit]
    correct = 0
    for sample in samples:
        inputs, _ = encode_sample(vlm, sample)
        pred = vlm.tokenizer.decode(greedy_answer(vlm, inputs, max_new_tokens), skip_special_tokens=True).strip()
        correct += pred in [a.strip() for a in sample.answers]
    return correct / len(samples)


def train(spec: ZooSpec, out: str | Path, *, tasks_dir: str | Path | None = None, steps: int | None = None,
          eval_limit: int | None = None, progress: Callable[[int, float], None] | None = None) -> TrainResult:
    """Build ``spec``'s checkpoint in ``out`` and train it; evaluates on ``tasks_dir`` test sets if given."""
    from .models import load

    out = Path(out)
    steps = steps or spec.steps
    torch.manual_seed(spec.seed)
    rng = np.random.default_rng([spec.seed, 7])
    build_tiny(out, spec.tiny_spec())
    vlm = load(out, dtype="float32", device="cpu")
    model = vlm.hf
    model.train()
    # Auxiliary head (training only, not saved): read each cell's glyph off its visual token.
    aux_head = torch.nn.Linear(spec.hidden, AUX_CLASSES)
    features: list[torch.Tensor] = []
    projector = vlm._get(model, vlm.adapter.visual_features_path())
    hook = projector.register_forward_hook(lambda m, i, o: features.append(o[0] if isinstance(o, tuple) else o))
    params = list(model.named_parameters()) + [(f"aux.{n}", p) for n, p in aux_head.named_parameters()]
    decay = [p for n, p in params if p.ndim >= 2]
    no_decay = [p for n, p in params if p.ndim < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": spec.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=spec.lr, betas=(0.9, 0.98))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / spec.warmup) * 0.5 * (1 + math.cos(math.pi * min(1.0, s / steps))))
    result = TrainResult()
    start = time.perf_counter()
    for step in range(steps):
        batch, cells = _batch(vlm, rng, spec, spec.tasks)
        features.clear()
        loss = model(**batch).loss
        if spec.aux_weight:
            visual = features[-1].reshape(cells.shape[0], cells.shape[1], -1)
            loss = loss + spec.aux_weight * torch.nn.functional.cross_entropy(
                aux_head(visual).flatten(0, 1), cells.flatten())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        result.losses.append(loss.item())
        if progress:
            progress(step, result.losses[-1])
    result.seconds = time.perf_counter() - start
    hook.remove()
    model.eval()
    model.save_pretrained(out)
    if tasks_dir is not None:
        for task in spec.tasks:
            result.accuracy[task] = evaluate(vlm, Path(tasks_dir) / task / "test.jsonl", eval_limit)
        write_card(spec, out, result, steps)
    return result


def rewrite_card(out: Path) -> None:
    """Re-render a model card from its recorded ``zoo.json`` (no retraining)."""
    card = json.loads((out / "zoo.json").read_text())
    recipe = {k: tuple(v) if isinstance(v, list) else v for k, v in card["recipe"].items()}
    spec = ZooSpec(**recipe)
    result = TrainResult(losses=[card["final_loss"]], accuracy=card["accuracy"], seconds=card["train_seconds"])
    write_card(spec, out, result, spec.steps)


def write_card(spec: ZooSpec, out: Path, result: TrainResult, steps: int) -> None:
    recipe = asdict(replace(spec, steps=steps))
    card = {"name": spec.name, "recipe": recipe, "train_seconds": round(result.seconds, 1),
            "final_loss": round(float(np.mean(result.losses[-20:])), 4), "accuracy": result.accuracy}
    (out / "zoo.json").write_text(json.dumps(card, indent=2) + "\n")
    arch = {"llava": "LlavaForConditionalGeneration", "qwen2_vl": "Qwen2VLForConditionalGeneration",
            "qwen2_5_vl": "Qwen2_5_VLForConditionalGeneration"}[spec.arch]
    rows = "\n".join(f"| {t} | {a:.1%} |" for t, a in result.accuracy.items())
    (out / "README.md").write_text(f"""# {spec.name}: a toy {arch}

Trained from scratch by `horizon zoo train {spec.name}` on horizon's synthetic
tasks (`horizon/tasks.py`). Random weights at the start; vision tower,
projector and language model are trained together, with the loss on the
answer tokens only. This is a toy for testing interpretability tooling: it
knows nothing but these tasks.

| | |
|---|---|
| architecture | `{arch}` |
| language model | {spec.layers} layers, hidden {spec.hidden}, {spec.heads} heads |
| vision tower | {spec.vision_layers} layers, hidden {spec.vision_hidden} |
| visual tokens | {spec.grid} x {spec.grid} grid, {spec.image_size} px images |
| training | {steps} steps, batch {spec.batch} ({spec.ocr_share:.0%} code questions), AdamW lr {spec.lr} (warmup {spec.warmup}, cosine), weight decay {spec.weight_decay}, seed {spec.seed} |
| auxiliary objective | a linear head (discarded after training) reads what each cell shows (its digit, the shape's colour, or background) off the visual tokens the language model receives, weight {spec.aux_weight} |
| training time | {result.seconds / 60:.1f} min on 2 CPU cores |

Tasks: `ocr` asks for a code of {CODE_LENGTH} digit(s) drawn small in a 16 x 16
cell (one visual token); `colour` and `shape` ask about a large shape. The code
was made easier than planned: two-digit codes stayed near 50% within the CPU
budget, one digit trains to the accuracy below and still lives in a single
token's fine detail.

Held-out accuracy (greedy answer, exact match, the shipped test sets in
`data/tasks/`, 300 samples each):

| task | accuracy |
|---|---|
{rows}
""")
