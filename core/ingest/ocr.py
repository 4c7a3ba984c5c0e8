"""OCR for PDF pages that have no usable text layer (scans, text drawn as outlines).

The page is rendered with PyMuPDF and read by RapidOCR (PP-OCR detection + recognition, ONNX),
whose wheel carries its weights, so nothing is downloaded at run time. Its Chinese models read
Chinese and English. RapidOCR 3.x runs on whichever onnxruntime is installed (CPU or GPU build)
and does not pull the CPU one in itself. Boxes come back in PDF points, in the same page space
as the text layer's words, so OCR'd words highlight exactly like born-digital ones.

The engine is loaded lazily, once per process, on first use.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, Sequence

import numpy as np
import pymupdf

from core.errors import ModelNotInstalled
from core.types import Rect, Word

if TYPE_CHECKING:
    from core.ingest.pdf import TextLine

__all__ = [
    "OcrWord",
    "OcrLine",
    "OcrEngine",
    "RapidOcrEngine",
    "default_engine",
    "render_page",
    "ocr_page_lines",
    "ocr_page",
    "MAX_SIDE_PX",
    "DET_SIDE_PX",
]

MAX_SIDE_PX = 4000
"""Longest side of a rendered page: a poster-sized page still renders to ~48 MB, not gigabytes."""

DET_SIDE_PX = 1920


@dataclass(frozen=True)
class OcrWord:
    """A recognised word (a single character for CJK) with its box."""

    text: str
    rect: Rect
    space_before: bool = True


@dataclass(frozen=True)
class OcrLine:
    """A recognised line of text: its words left to right, its box and the recogniser's confidence."""

    text: str
    rect: Rect
    words: tuple[OcrWord, ...]
    score: float = 1.0


class OcrEngine(Protocol):
    """Anything that reads text lines from an image (H×W×3 uint8, RGB); boxes in pixels."""

    def recognize(self, image: np.ndarray) -> list[OcrLine]: ...


def _quad_rect(box: Any) -> Rect:
    pts = np.asarray(box, dtype=float).reshape(-1, 2)
    return (float(pts[:, 0].min()), float(pts[:, 1].min()), float(pts[:, 0].max()), float(pts[:, 1].max()))


def _split_evenly(text: str, rect: Rect) -> tuple[OcrWord, ...]:
    """Words of a line whose word boxes are unknown: boxes shared out by character count."""
    from core.ingest.pdf import is_cjk

    tokens: list[tuple[int, int, bool]] = []  # start, end, space_before
    i = 0
    prev_end = 0
    while i < len(text):
        if text[i].isspace():
            i += 1
            continue
        j = i + 1
        if not is_cjk(text[i]):
            while j < len(text) and not text[j].isspace() and not is_cjk(text[j]):
                j += 1
        tokens.append((i, j, i > prev_end or not tokens))
        prev_end = j
        i = j
    n = max(1, len(text))
    x0, y0, x1, y1 = rect
    step = (x1 - x0) / n
    return tuple(OcrWord(text[s:e], (x0 + s * step, y0, x0 + e * step, y1), sp) for s, e, sp in tokens)


def _align_words(text: str, rect: Rect, items: Sequence[Any]) -> tuple[OcrWord, ...]:
    """Match the recogniser's per-word boxes to the line text; fall back to an even split."""
    out: list[OcrWord] = []
    pos = 0
    for item in items:
        try:
            word, _score, box = item
        except (TypeError, ValueError):
            return _split_evenly(text, rect)
        word = str(word).strip()
        if not word or box is None:
            continue
        at = text.find(word, pos)
        if at < 0:
            return _split_evenly(text, rect)
        if text[pos:at].strip():  # skipped over recognised text: the boxes do not match the line
            return _split_evenly(text, rect)
        out.append(OcrWord(word, _quad_rect(box), at > pos or not out))
        pos = at + len(word)
    if not out or text[pos:].strip():
        return _split_evenly(text, rect)
    return tuple(out)


class RapidOcrEngine:
    """RapidOCR 3.x with the PP-OCR models shipped in its wheel. Uses CUDA when onnxruntime-gpu has it."""

    def __init__(self, *, use_gpu: bool | None = None, threads: int | None = None,
                 min_score: float = 0.5) -> None:
        try:
            import onnxruntime
            from rapidocr import RapidOCR
        except ImportError as e:
            raise ModelNotInstalled(f"OCR is not available: {e}",
                                    fix="install rapidocr and onnxruntime (scripts/setup does this)") from None
        if use_gpu is None:
            use_gpu = "CUDAExecutionProvider" in onnxruntime.get_available_providers()
        params: dict[str, Any] = {
            "Global.log_level": "error",
            "Global.text_score": min_score,
            # We render at a known resolution already; do not shrink it again below legibility.
            "Global.max_side_len": MAX_SIDE_PX,
            # Find text boxes on a copy at most DET_SIDE_PX long (detection is most of the cost and
            # does not need full resolution); lines are still read from the full-resolution crops.
            "Det.limit_type": "max",
            "Det.limit_side_len": DET_SIDE_PX,
            "EngineConfig.onnxruntime.use_cuda": bool(use_gpu),
        }
        if threads:
            params["EngineConfig.onnxruntime.intra_op_num_threads"] = int(threads)
        self._ocr = RapidOCR(params=params)
        self._lock = threading.Lock()  # one image at a time per engine
        self.use_gpu = bool(use_gpu)

    def recognize(self, image: np.ndarray) -> list[OcrLine]:
        if image.ndim == 2:
            image = np.repeat(image[:, :, None], 3, axis=2)
        bgr = np.ascontiguousarray(image[:, :, 2::-1])  # RapidOCR takes OpenCV's BGR order
        with self._lock:
            res = self._ocr(bgr, return_word_box=True)
        txts = getattr(res, "txts", None)
        boxes = getattr(res, "boxes", None)
        if not txts or boxes is None:
            return []
        scores = getattr(res, "scores", None) or (1.0,) * len(txts)
        word_results = getattr(res, "word_results", None) or ()
        # RapidOCR drops lines without word boxes from word_results: only trust it when aligned.
        aligned = len(word_results) == len(txts)
        lines = []
        for k, (txt, box, score) in enumerate(zip(txts, boxes, scores)):
            txt = str(txt)
            if not txt.strip():
                continue
            rect = _quad_rect(box)
            words = _align_words(txt, rect, word_results[k]) if aligned else _split_evenly(txt, rect)
            lines.append(OcrLine(txt, rect, words, float(score)))
        return lines


_default: RapidOcrEngine | None = None
_default_lock = threading.Lock()


def default_engine() -> RapidOcrEngine:
    """The process's shared OCR engine, built on first use (about a second)."""
    global _default
    if _default is None:
        with _default_lock:
            if _default is None:
                _default = RapidOcrEngine()
    return _default


def render_page(page: pymupdf.Page, *, dpi: int = 200, max_side_px: int = MAX_SIDE_PX) -> tuple[np.ndarray, float]:
    """The page as an RGB image at ``dpi``, capped so its long side is at most ``max_side_px``.

    Returns the image and its scale in pixels per PDF point.
    """
    rect = page.rect
    long_side = max(rect.width, rect.height, 1.0)
    zoom = min(dpi / 72.0, max_side_px / long_side)
    pix = page.get_pixmap(matrix=pymupdf.Matrix(zoom, zoom), colorspace=pymupdf.csRGB, alpha=False)
    img = np.frombuffer(pix.samples, dtype=np.uint8).reshape(pix.height, pix.width, pix.n)
    return img[:, :, :3].copy(), pix.width / max(rect.width, 1e-6)


def ocr_page_lines(page: pymupdf.Page, *, engine: OcrEngine | None = None, dpi: int = 200,
                   max_side_px: int = MAX_SIDE_PX) -> list["TextLine"]:
    """OCR one page into text lines with boxes in PDF points (not yet in reading order)."""
    from core.ingest.pdf import LineWord, TextLine

    engine = engine or default_engine()
    image, scale = render_page(page, dpi=dpi, max_side_px=max_side_px)
    x0, y0 = page.rect.x0, page.rect.y0

    def to_page(r: Rect) -> Rect:
        return (x0 + r[0] / scale, y0 + r[1] / scale, x0 + r[2] / scale, y0 + r[3] / scale)

    out = []
    for line in engine.recognize(image):
        words = [LineWord(w.text, to_page(w.rect), w.space_before) for w in line.words if w.text]
        if words:
            out.append(TextLine(words, to_page(line.rect), None))
    return out


def ocr_page(page: pymupdf.Page, *, engine: OcrEngine | None = None, dpi: int = 200,
             max_side_px: int = MAX_SIDE_PX) -> tuple[str, tuple[Word, ...]]:
    """OCR one page: its text in reading order and its words (offsets index the text exactly)."""
    from core.ingest.pdf import assemble_page_text, order_lines

    text, words, _ = assemble_page_text(order_lines(ocr_page_lines(page, engine=engine, dpi=dpi,
                                                                   max_side_px=max_side_px)))
    return text, words
