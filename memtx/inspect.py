"""What a trained model's memory does over one document: Memformer's writer, ARMT's state.

``inspect_memory`` streams a document through a trained run and reports, for a Memformer
(the writer's attention, from ``aux``): for every segment and slot the weight the slot
keeps on itself (retention) and puts on the previous segment's tokens (writing), so

- retention per slot and segment (a heatmap, and per-slot means in the summary);
- which tokens each slot writes most (attention summed over the document);
- each slot's forgetting-bias norm ||v_i|| (BMN);

and for an ARMT (:class:`ARMTReport`), per layer and segment: the norm of the
associative matrix A after the segment, the mean write gate b and the mean correction g
of the segment's memory tokens (g = 1 in the first segment; near 0 once z already holds
a key's features).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from memtx.config import ARMTConfig, MemformerConfig
from memtx.data import load_tokenizer
from memtx.errors import ConfigError, DataError
from memtx.paths import check_writable_folder
from memtx.recurrence import stream

__all__ = ["ARMTReport", "MemoryReport", "inspect_memory"]


@dataclass
class MemoryReport:
    """The analysis of one document.

    Attributes:
        retention: [segments, slots] mean weight (over heads) a slot keeps on itself.
        top_tokens: per slot, the (token text, weight) pairs it writes most.
        bias_norms: [slots] ||v_i|| of BMN (empty without forgetting).
        document: the document's name.
        files: the PNG and text files written.
    """

    retention: np.ndarray
    top_tokens: list[list[tuple[str, float]]]
    bias_norms: np.ndarray
    document: str
    files: list[Path]

    def summary(self) -> str:
        keep = self.retention[1:] if len(self.retention) > 1 else self.retention
        lines = [
            f"document {self.document}: {len(self.retention)} segments, "
            f"{self.retention.shape[1]} slots",
            f"mean retention {keep.mean():.3f} (min slot {keep.mean(0).min():.3f}, "
            f"max slot {keep.mean(0).max():.3f}); writing takes the rest",
        ]
        for slot, tokens in enumerate(self.top_tokens):
            norm = f"  |v|={self.bias_norms[slot]:.2f}" if len(self.bias_norms) else ""
            shown = " ".join(f"{t!r}:{w:.2f}" for t, w in tokens[:6])
            lines.append(
                f"slot {slot:2d} retention {keep[:, slot].mean():.3f}{norm}  writes {shown}"
            )
        return "\n".join(lines)

    def save(self, folder: Path) -> list[Path]:
        """Write the PNGs, ``memory.txt`` and ``memory.json`` into ``folder``."""
        files = _plot(self, folder)
        record = {
            "document": self.document,
            "retention": self.retention.tolist(),
            "top_tokens": self.top_tokens,
            "bias_norms": self.bias_norms.tolist(),
        }
        return [*files, *_write_summary(self.summary(), record, folder)]


@dataclass
class ARMTReport:
    """ARMT's state over one document, per segment and layer (arrays [segments, layers]).

    Attributes:
        a_norms: the Frobenius norm of A after each segment.
        write_gate: the mean write gate b of the segment's memory tokens.
        correction: their mean correction g (1 in the first segment).
        document: the document's name.
        files: the PNG and text files written.
    """

    a_norms: np.ndarray
    write_gate: np.ndarray
    correction: np.ndarray
    document: str
    files: list[Path]

    def summary(self) -> str:
        segments, layers = self.a_norms.shape
        later = self.correction[1:] if segments > 1 else self.correction
        lines = [f"document {self.document}: {segments} segments, {layers} layers"]
        for layer in range(layers):
            lines.append(
                f"layer {layer}: |A| {self.a_norms[0, layer]:.3g} -> {self.a_norms[-1, layer]:.3g}"
                f", write gate {self.write_gate[:, layer].mean():.3f}, correction after the "
                f"first segment {later[:, layer].mean():.3f}"
            )
        return "\n".join(lines)

    def save(self, folder: Path) -> list[Path]:
        """Write ``armt.png``, ``memory.txt`` and ``memory.json`` into ``folder``."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, axes = plt.subplots(1, 3, figsize=(13, 3.5))
        shown = (("|A|", self.a_norms), ("write gate b", self.write_gate))
        for ax, (title, values) in zip(axes, (*shown, ("correction g", self.correction))):
            for layer in range(values.shape[1]):
                ax.plot(values[:, layer], label=f"layer {layer}")
            ax.set_xlabel("segment")
            ax.set_title(title)
        axes[0].legend(fontsize="small")
        fig.suptitle(f"ARMT state over {self.document}")
        fig.tight_layout()
        path = folder / "armt.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        record = {
            "document": self.document,
            "a_norms": self.a_norms.tolist(),
            "write_gate": self.write_gate.tolist(),
            "correction": self.correction.tolist(),
        }
        return [path, *_write_summary(self.summary(), record, folder)]


def _write_summary(summary: str, record: dict[str, object], folder: Path) -> list[Path]:
    text, data = folder / "memory.txt", folder / "memory.json"
    text.write_text(summary + "\n", encoding="utf-8")
    data.write_text(json.dumps(record), encoding="utf-8")
    return [text, data]


@torch.no_grad()
def inspect_memory(
    run_dir: Path,
    *,
    corpus: str | None = None,
    document: int = 0,
    split: str = "valid",
    max_segments: int = 64,
    out_dir: Path | None = None,
    top: int = 8,
) -> MemoryReport | ARMTReport:
    """Analyse a trained Memformer's writer, or an ARMT's state, on one document of ``split``.

    Raises:
        ConfigError: the run is neither a Memformer with memory nor an ARMT.
        DataError: the document index is out of range, ``split`` is not valid or test,
            ``max_segments`` or ``top`` < 1, an empty ``corpus``, or a ``out_dir`` that is
            a file or cannot be written.
    """
    import dataclasses

    from memtx.data import load_splits
    from memtx.train import load_trained

    if split not in ("valid", "test"):
        raise DataError(f"--split must be valid or test, got {split!r}")
    if max_segments < 1:
        raise DataError(f"--max-segments must be >= 1, got {max_segments}")
    if top < 1:
        raise DataError(f"top must be >= 1, got {top}")
    if corpus is not None and not corpus.strip():
        raise DataError("--data is empty: give a corpus name, a text file or a folder")
    folder = Path(out_dir) if out_dir is not None else Path(run_dir) / "inspect"
    check_writable_folder(folder)
    run, model = load_trained(Path(run_dir), device="cpu")
    cfg = run.model
    if not isinstance(cfg, ARMTConfig | MemformerConfig) or not getattr(cfg, "use_memory", True):
        raise ConfigError(
            f"memtx inspect needs a Memformer run with memory or an ARMT run, got {cfg.name!r}"
        )
    if corpus is not None:
        run = dataclasses.replace(run, data=dataclasses.replace(run.data, corpus=corpus))
    splits = load_splits(
        run.data.corpus,
        valid_fraction=run.data.valid_fraction,
        test_fraction=run.data.test_fraction,
        seed=run.data.split_seed,
    )
    docs = getattr(splits, split)
    if not 0 <= document < len(docs):
        raise DataError(f"--document must be in [0, {len(docs)}), got {document}")
    tokenizer = load_tokenizer(Path(run_dir))
    ids = tokenizer.encode(docs[document].data)[: max_segments * cfg.segment_len]
    tokens = torch.from_numpy(ids.astype(np.int64))[None]  # (1, N)

    name = docs[document].name
    report: MemoryReport | ARMTReport
    if isinstance(cfg, ARMTConfig):
        report = _armt_report(model, tokens, segment_len=cfg.segment_len, document=name)
    else:
        report = _memformer_report(model, tokens, tokenizer, cfg, document=name, top=top)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:  # e.g. a folder the checks above cannot see is read-only
        raise DataError(f"cannot write the report into {folder}: {exc.strerror}") from None
    report.files = report.save(folder)
    return report


def _armt_report(
    model: Any, tokens: torch.Tensor, *, segment_len: int, document: str
) -> ARMTReport:
    norms, gates, corrections = [], [], []
    for _, out in stream(model, tokens, model.init_memory(1), segment_len=segment_len):
        norms.append(out.memory.A[:, 0].flatten(1).norm(dim=1).numpy())  # (layers,)
        gates.append(out.aux["write_gate"][:, 0].numpy())
        corrections.append(out.aux["correction"][:, 0].numpy())
    return ARMTReport(
        a_norms=np.stack(norms),
        write_gate=np.stack(gates),
        correction=np.stack(corrections),
        document=document,
        files=[],
    )


def _memformer_report(
    model: Any,
    tokens: torch.Tensor,
    tokenizer: Any,
    cfg: MemformerConfig,
    *,
    document: str,
    top: int,
) -> MemoryReport:
    retention: list[np.ndarray] = []
    writes: list[dict[str, float]] = [{} for _ in range(cfg.memory_slots)]
    previous: torch.Tensor | None = None
    for start, out in stream(model, tokens, model.init_memory(1), segment_len=cfg.segment_len):
        segment = tokens[:, start : start + out.logits.shape[1]]  # (1, L)
        # The writer's attention is no part of the memory value: each step reports it in aux.
        attention = out.aux["write_attention"][0].mean(0)  # (slots, 1 + L), over heads
        retention.append(attention[:, 0].numpy())
        if previous is not None:  # the writer read the previous segment
            for position, token in enumerate(previous[0].tolist()):
                text = tokenizer.decode([token])
                for slot in range(cfg.memory_slots):
                    weight = float(attention[slot, 1 + position])
                    writes[slot][text] = writes[slot].get(text, 0.0) + weight
        previous = segment
    slot_bias = getattr(model, "slot_bias", None)
    bias = slot_bias.norm(dim=-1).numpy() if slot_bias is not None else np.zeros(0)
    return MemoryReport(
        retention=np.stack(retention),
        top_tokens=[sorted(w.items(), key=lambda kv: -kv[1])[:top] for w in writes],
        bias_norms=bias,
        document=document,
        files=[],
    )


def _plot(report: MemoryReport, out_dir: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    files = []
    fig, ax = plt.subplots(figsize=(8, 4))
    image = ax.imshow(report.retention.T, aspect="auto", cmap="viridis", vmin=0, vmax=1)
    ax.set_xlabel("segment")
    ax.set_ylabel("slot")
    ax.set_title(f"writer: weight each slot keeps on itself (retention), {report.document}")
    fig.colorbar(image, ax=ax, label="retention (1 - writing)")
    fig.tight_layout()
    path = out_dir / "retention.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    files.append(path)
    if len(report.bias_norms):
        fig, ax = plt.subplots(figsize=(8, 3))
        ax.bar(range(len(report.bias_norms)), report.bias_norms)
        ax.set_xlabel("slot")
        ax.set_ylabel("||v_i||")
        ax.set_title("forgetting bias norm per slot (BMN)")
        fig.tight_layout()
        path = out_dir / "bias_norms.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        files.append(path)
    return files
