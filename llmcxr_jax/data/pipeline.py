"""The LM input pipeline: records -> instruction paragraphs -> tokens -> packed rows on the mesh.

    records (TFDS data source, schema of data/tfds/common.py)
      -> stage selection (data/reports.py) and one direction per image, VQA questions
      -> [mix with dolly-style instructions, 0.8 : 0.2]
      -> global shuffle, new order every epoch -> this host's share
      -> paragraph -> (ids, loss mask) -> inputs/targets shifted *within* the paragraph
      -> drop (and count) paragraphs longer than max_len: nothing is ever cut
      -> first-fit packing into rows of max_len (segment ids, positions restart per paragraph)
      -> batch -> global arrays sharded on the mesh's batch axes

Because targets are shifted before packing, no target crosses from one paragraph into the next.
The iterator's position is Grain's state: save it with the checkpoint and restore it, and the
batches continue exactly. Records whose codes are missing or malformed, or that have no usable
text for the stage, are skipped and counted in `counters`.

It imports jax because its job is arrays on devices: the batches it returns are global
`jax.Array`s sharded on the training mesh.
"""

from __future__ import annotations

import dataclasses
import threading
from collections import Counter
from collections.abc import Sequence
from typing import Any

import grain
import jax
import ml_collections
import numpy as np

from llmcxr_jax import sharding
from llmcxr_jax.data import instructions, vqa
from llmcxr_jax.data.records import field_text
from llmcxr_jax.errors import InputError
from llmcxr_jax.tokenizer import MultimodalTokenizer, Paragraph

TEXT_FIELDS = ("id", "subject_id", "study_id", "view", "study_datetime", "findings", "impression")


class Counters:
    """Thread-safe counts of what the pipeline dropped, by reason."""

    def __init__(self) -> None:
        self._c: Counter[str] = Counter()
        self._lock = threading.Lock()

    def add(self, key: str, n: int = 1) -> None:
        with self._lock:
            self._c[key] += n

    def as_dict(self) -> dict[str, int]:
        with self._lock:
            return dict(self._c)


@dataclasses.dataclass(frozen=True)
class Example:
    record: int  # index into the record source
    task: str  # "report" (CXR-to-report) | "image" (report-to-CXR) | "vqa"
    qa: vqa.QA | None = None


class ImageTextExamples:
    """The image-text examples of one stage, as a random-access source of Paragraphs.

    Stage 1: every record with FINDINGS and/or IMPRESSION (stage-1 text rule). Stage 2: PA/AP
    views, earliest study per patient, IMPRESSION only. Each image serves one direction.
    VQA questions (synthesised from labels, or given per id) come from the stage-2 set, as in
    LLM-CXR, in both stages.
    """

    def __init__(
        self,
        records: Any,
        *,
        stage: int,
        num_codes: int,
        n_embed: int,
        seed: int = 0,
        vqa_mode: str = "synthesize",
        vqa_by_id: dict[str, list[vqa.QA]] | None = None,
        counters: Counters | None = None,
        vqa_per_image: int = 4,
        directions: str = "alternate",
    ):
        from llmcxr_jax.data import reports

        if stage not in (1, 2):
            raise InputError(f"stage must be 1 or 2, got {stage}")
        self.records, self.stage, self.seed = records, stage, seed
        self.counters = counters or Counters()
        meta = [self._meta(i) for i in range(len(records))]
        valid = [m for m in meta if self._codes_ok(m, num_codes, n_embed)]
        stage2 = set(reports.select_stage2(valid))
        stage2_idx = {valid[k]["index"] for k in stage2}
        texts: dict[int, str] = {}
        for m in valid:
            if stage == 1:
                t = reports.stage1_text(m["findings"], m["impression"])
            else:
                t = reports.stage2_text(m["impression"]) if m["index"] in stage2_idx else None
            if t:
                texts[m["index"]] = t
            elif stage == 1:
                self.counters.add("no_report_text")
        self.texts = texts
        if directions == "alternate":  # LLM-CXR: each image serves one direction
            assigned = instructions.assign_directions([meta[i]["id"] for i in texts], seed)
            examples = [Example(i, assigned[meta[i]["id"]]) for i in sorted(texts)]
        elif directions == "both":  # every image in both directions (twice the examples)
            examples = [Example(i, d) for i in sorted(texts) for d in ("report", "image")]
        else:
            raise InputError(f"directions must be alternate or both, got {directions!r}")
        if vqa_mode != "none":
            for i in sorted(stage2_idx):
                m = meta[i]
                if vqa_mode == "synthesize":
                    qas = vqa.synthesize(
                        m["labels"],
                        m["details"],
                        seed=seed,
                        key=m["id"],
                        max_questions=vqa_per_image,
                    )
                elif vqa_mode == "file":
                    qas = (vqa_by_id or {}).get(m["id"], [])
                else:
                    raise InputError(f"vqa_mode must be synthesize, file or none: {vqa_mode!r}")
                examples += [Example(i, "vqa", qa) for qa in qas]
        self.examples = examples
        self.meta = meta

    def _meta(self, i: int) -> dict[str, Any]:
        r = self.records[i]
        m = {k: field_text(r.get(k, "")) for k in TEXT_FIELDS}
        m["index"] = i
        m["labels"] = np.asarray(r.get("labels", np.full(14, -2)), np.int8)
        m["details"] = field_text(r.get("details", "") or "")
        m["codes"] = np.asarray(r.get("codes", ()), np.int64)
        return m

    def _codes_ok(self, m: dict[str, Any], num_codes: int, n_embed: int) -> bool:
        codes = m["codes"]
        if codes.size == 0:
            self.counters.add("missing_codes")
            return False
        if codes.size != num_codes or codes.min() < 0 or codes.max() >= n_embed:
            self.counters.add("invalid_codes")
            return False
        return True

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, k: int) -> Paragraph:
        ex = self.examples[k]
        m = self.meta[ex.record]
        codes = m["codes"].astype(np.int32)
        if ex.task == "vqa":
            return instructions.vqa(ex.qa.question, ex.qa.answer, codes)
        text = self.texts[ex.record]
        build = instructions.cxr_to_report if ex.task == "report" else instructions.report_to_cxr
        return build(text, codes, seed=self.seed, key=m["id"])


class InstructionExamples:
    """dolly-15k-style records as Paragraphs."""

    def __init__(self, records: Sequence[dict[str, str]]):
        self.records = list(records)

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, k: int) -> Paragraph:
        r = self.records[k]
        return instructions.instruction_following(r["instruction"], r["context"], r["response"])


def tokenize(
    paragraph: Paragraph, tokenizer: MultimodalTokenizer, mask_mode: str
) -> dict[str, np.ndarray]:
    """Inputs and targets shifted inside the paragraph (so none crosses a packing boundary)."""
    ids, mask = tokenizer.encode_paragraph(paragraph, mask_mode)
    return {"inputs": ids[:-1], "targets": ids[1:], "loss_mask": mask[1:]}


def paragraph_dataset(
    image_text: ImageTextExamples | None,
    instruction: InstructionExamples | None,
    *,
    weights: tuple[float, float] = (0.8, 0.2),
    seed: int = 0,
) -> grain.MapDataset:
    """Shuffled, endlessly repeated paragraphs, image-text and instructions mixed by weight."""
    parts, w = [], []
    for k, (src, weight) in enumerate(((image_text, weights[0]), (instruction, weights[1]))):
        if src is not None and len(src) and weight > 0:
            parts.append(grain.MapDataset.source(src).shuffle(seed=seed + k).repeat())
            w.append(weight)
    if not parts:
        raise InputError("no examples: every record was skipped (see counters)")
    return parts[0] if len(parts) == 1 else grain.MapDataset.mix(parts, weights=w)


class LMBatches:
    """Packed, batched, globally sharded training rows; `get_state`/`set_state` resume exactly.

    Each batch: tokens, targets, loss_mask, segment_ids, positions, all int32 [B, max_len].

    The paragraphs are read as `input_shards` independent streams (shard s: paragraphs s, s+S,
    ...), each packed on its own into B/S rows of every global batch; host i of n reads shards
    [i*S/n, (i+1)*S/n) and feeds their rows to its devices. With `input_shards` fixed, the
    global batches do not depend on how many hosts read them: one host reading both shards
    trains on exactly what two hosts reading one each do (0, the default: one shard per host).
    """

    def __init__(
        self,
        paragraphs: grain.MapDataset,
        tokenizer: MultimodalTokenizer,
        *,
        max_len: int,
        batch_size: int,
        mask_mode: str = "response",
        mesh: jax.sharding.Mesh | None = None,
        num_threads: int = 4,
        packing_bins: int | None = None,
        counters: Counters | None = None,
        worker_count: int = 0,
        input_shards: int = 0,
    ):
        pc, pi = jax.process_count(), jax.process_index()
        shards = input_shards or pc
        if shards % pc:
            raise InputError(f"data.input_shards {shards} is not a multiple of the {pc} hosts")
        if batch_size % shards:
            what = f"{shards} input shards" if input_shards else f"{pc} hosts"
            raise InputError(f"batch_size {batch_size} is not divisible by {what}")
        rows = batch_size // shards  # each shard's rows in every global batch
        self.counters = counters or Counters()
        self.max_len = max_len

        def encode(p: Paragraph) -> dict[str, np.ndarray]:
            return tokenize(p, tokenizer, mask_mode)

        def fits(ex: dict[str, np.ndarray]) -> bool:
            if len(ex["inputs"]) > max_len:
                self.counters.add("too_long")
                return False
            return True

        def stream(s: int) -> grain.IterDataset:
            ds = paragraphs[s::shards].map(encode)
            it = ds.to_iter_dataset(
                grain.ReadOptions(num_threads=num_threads, prefetch_buffer_size=64)
            )
            if worker_count:
                it = it.mp_prefetch(grain.MultiprocessingOptions(num_workers=worker_count))
            it = it.filter(fits)
            L = {"inputs": max_len, "targets": max_len, "loss_mask": max_len}
            it = grain.experimental.FirstFitPackIterDataset(
                it, length_struct=L, num_packing_bins=packing_bins or 4 * rows, shuffle_bins=False
            )
            return it.map(self._rename).batch(rows, drop_remainder=True)

        mine = range(pi * shards // pc, (pi + 1) * shards // pc)
        self._streams = {s: stream(s) for s in mine}
        self._iters = {s: iter(ds) for s, ds in self._streams.items()}
        self._sharding = None
        if mesh is not None:
            self._sharding = sharding.logical_sharding(mesh, ("activation_batch", None))

    @staticmethod
    def _rename(row: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {
            "tokens": row["inputs"].astype(np.int32),
            "targets": row["targets"].astype(np.int32),
            "loss_mask": row["loss_mask"].astype(np.int32),
            "segment_ids": row["inputs_segment_ids"].astype(np.int32),
            "positions": row["inputs_positions"].astype(np.int32),
        }

    def next_local(self) -> dict[str, np.ndarray]:
        """This host's rows of the next global batch: its shards' rows, in shard order."""
        parts = [next(it) for it in self._iters.values()]
        if len(parts) == 1:
            return parts[0]
        return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}

    def next(self) -> dict[str, Any]:
        local = self.next_local()
        if self._sharding is None:
            return local
        return {
            k: jax.make_array_from_process_local_data(self._sharding, v) for k, v in local.items()
        }

    def get_state(self) -> dict[str, Any]:
        """This host's position: each of its shards' iterator state, by shard number."""
        return {"shards": {str(s): it.get_state() for s, it in self._iters.items()}}

    def set_state(self, state: dict[str, Any]) -> None:
        states = state.get("shards")
        if states is None and len(self._iters) == 1:  # saved before input shards existed
            states = {str(s): state for s in self._iters}
        missing = [s for s in self._iters if str(s) not in (states or {})]
        if missing:
            raise InputError(
                f"the checkpoint holds no data position for input shard(s) {missing} "
                "(saved with another data.input_shards)"
            )
        for s, ds in self._streams.items():
            it = iter(ds)
            it.set_state(states[str(s)])
            self._iters[s] = it


def from_config(
    config: ml_collections.ConfigDict,
    records: Any,
    tokenizer: MultimodalTokenizer,
    *,
    num_codes: int,
    mesh: jax.sharding.Mesh | None = None,
    instruction_records: Sequence[dict[str, str]] | None = None,
) -> tuple[LMBatches, Counters]:
    """The pipeline a training config describes (config.data: stage, max_len, batch_size, ...)."""
    d = config.data
    counters = Counters()
    image_text = ImageTextExamples(
        records,
        stage=d.stage,
        num_codes=num_codes,
        n_embed=tokenizer.num_image_codes,
        seed=d.seed,
        vqa_mode=d.get("vqa", "synthesize"),
        counters=counters,
        vqa_per_image=d.get("vqa_per_image", 4),
        directions=d.get("directions", "alternate"),
    )
    instr = InstructionExamples(instruction_records) if instruction_records else None
    paragraphs = paragraph_dataset(image_text, instr, weights=tuple(d.mix_weights), seed=d.seed)
    batches = LMBatches(
        paragraphs,
        tokenizer,
        max_len=d.max_len,
        batch_size=d.batch_size,
        mask_mode=d.mask_mode,
        mesh=mesh,
        num_threads=d.get("num_threads", 4),
        counters=counters,
        worker_count=d.get("worker_count", 0),
        input_shards=d.get("input_shards", 0),
    )
    return batches, counters
