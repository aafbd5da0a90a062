"""HTML pieces of the offline report: tables, inlined images and matplotlib figures as PNG, the page head."""

from __future__ import annotations

import base64
import html
import io

import cv2
import numpy as np


def table(head: tuple[str, ...], rows: list[tuple[str, ...]]) -> str:
    cells = "".join(f"<th>{html.escape(h)}</th>" for h in head)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(v)}</td>" for v in row) + "</tr>" for row in rows)
    return f"<table><tr>{cells}</tr>{body}</table>"


def grid(head: tuple[str, ...], rows: list[list[str]]) -> str:
    """A table whose cells are HTML already (figures, images); the head is text."""
    cells = "".join(f"<th>{html.escape(h)}</th>" for h in head)
    body = "".join("<tr>" + "".join(f"<td>{cell}</td>" for cell in row) + "</tr>" for row in rows)
    return f'<div class="scroll"><table class="grid"><tr>{cells}</tr>{body}</table></div>'


def figure(content: str, caption: str) -> str:
    """An image (or a placeholder) with its whole caption underneath (text, escaped here)."""
    return f"<figure>{content}<figcaption>{html.escape(caption)}</figcaption></figure>"


def placeholder(text: str) -> str:
    """A box saying why there is no picture (`no_pair`, `missing`, ...), in place of an image."""
    return f'<div class="placeholder">{html.escape(text)}</div>'


def counts_table(counts: dict[str, dict[str, int]]) -> str:
    statuses = sorted({s for c in counts.values() for s in c})
    head = "".join(f"<th>{html.escape(s)}</th>" for s in statuses)
    body = "".join(f"<tr><td>{html.escape(k)}</td>" + "".join(f"<td>{c.get(s, 0)}</td>" for s in statuses) + "</tr>"
                   for k, c in counts.items())
    return f"<table><tr><th></th>{head}</tr>{body}</table>"


def img(rgb: np.ndarray) -> str:
    _, data = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 85])
    return f'<img src="data:image/jpeg;base64,{base64.b64encode(data.tobytes()).decode()}">'


def img_png(data: bytes) -> str:
    return f'<img src="data:image/png;base64,{base64.b64encode(data).decode()}">'


def pyplot():
    """matplotlib's pyplot on the Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    return plt


def png(fig) -> bytes:
    """A matplotlib figure as PNG bytes (no software tag, so the same figure gives the same bytes); closes it."""
    plt = pyplot()
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", metadata={"Software": None})
    plt.close(fig)
    return buffer.getvalue()


HEAD = """<!doctype html><html><head><meta charset="utf-8"><title>{title}</title><style>
body {{ font-family: sans-serif; margin: 2em; }} img {{ max-width: 100%; display: block; margin: .5em 0; }}
table {{ border-collapse: collapse; }} td, th {{ border: 1px solid #ccc; padding: 2px 8px; text-align: right; }}
pre {{ background: #f6f6f6; padding: 1em; max-height: 20em; overflow: auto; }}
.scroll {{ overflow-x: auto; }} table.grid td {{ vertical-align: top; text-align: left; }}
table.grid img {{ max-width: none; margin: 0; }} figure {{ margin: 0; }}
figcaption {{ font-size: 80%; max-width: 16em; overflow-wrap: anywhere; }}
.placeholder {{ width: 160px; height: 120px; display: flex; align-items: center; justify-content: center;
  background: #eee; color: #a00; font-weight: bold; border: 1px dashed #999; }}
</style></head><body>"""
