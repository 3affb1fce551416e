"""The drawing of a case's recovery timeline (the rows of ``console.timeline_rows``): an inline SVG, server-side.

Every string in it is escaped. Pure: it reads only the rows given.
"""

from __future__ import annotations

from django.utils.html import escape
from django.utils.safestring import SafeString, mark_safe

from .timeline_rows import CREDENTIAL, LANES, REVIVE, RUNTIME, TimelineRow

_ROW = 30
_TOP = 58
_LANE_X = {CREDENTIAL: 150, REVIVE: 240, RUNTIME: 330}
_TEXT_X = 390
_WIDTH = 1000
_COLOURS = {"ok": "#1f6feb", "live": "#0a7f3f", "refused": "#c62828", "operator": "#8250df"}


def _colour(row: TimelineRow) -> str:
    if row.refused:
        return _COLOURS["refused"]
    if row.live:
        return _COLOURS["live"]
    if row.by_operator:
        return _COLOURS["operator"]
    return _COLOURS["ok"]


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def timeline_svg(rows: list[TimelineRow], *, title: str = "Recovery timeline") -> SafeString:
    """The rows as swim lanes (one per system), top to bottom in time order: an inline ``<svg>`` element.

    A live transition is a numbered green disc, an operator's act a violet diamond, a refusal or failure red.
    """
    height = _TOP + max(len(rows), 1) * _ROW + 16
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="revive-timeline" role="img" aria-labelledby="tl-title" '
        f'width="{_WIDTH}" height="{height}" viewBox="0 0 {_WIDTH} {height}" font-family="system-ui, sans-serif" font-size="12">',
        f'<title id="tl-title">{escape(title)}</title>',
        f'<rect x="0" y="0" width="{_WIDTH}" height="{height}" fill="#fbfbfd" stroke="#d0d7de"/>',
        '<text x="12" y="20" font-size="10" font-weight="600" fill="#57606a">TIME (UTC)</text>',
    ]
    if rows:
        out.append(f'<text x="12" y="33" font-size="10" fill="#57606a">{rows[0].at:%Y-%m-%d}</text>')
    for lane, (first, second) in LANES:
        x = _LANE_X[lane]
        for dy, word in ((20, first), (33, second)):
            out.append(
                f'<text x="{x}" y="{dy}" text-anchor="middle" font-size="10" font-weight="600" fill="#57606a">{escape(word)}</text>'
            )
        out.append(
            f'<line x1="{x}" y1="{_TOP - 20}" x2="{x}" y2="{height - 8}" stroke="#d0d7de" stroke-dasharray="4 4"/>'
        )
    out.append(f'<text x="{_TEXT_X}" y="20" font-size="10" font-weight="600" fill="#57606a">WHAT HAPPENED</text>')
    out.append(f'<text x="{_TEXT_X}" y="33" font-size="10" fill="#57606a">WHO — EVIDENCE</text>')
    if not rows:
        out.append(f'<text x="{_TEXT_X}" y="{_TOP + 4}" fill="#57606a">No audit events recorded for this case.</text>')
    points = [(_LANE_X[r.lane], _TOP + i * _ROW) for i, r in enumerate(rows)]
    if len(points) > 1:
        path = " ".join(f"{x},{y}" for x, y in points)
        out.append(f'<polyline points="{path}" fill="none" stroke="#8c959f" stroke-width="1.5"/>')
    previous_day = rows[0].at.date() if rows else None
    for row, (x, y) in zip(rows, points, strict=False):
        colour = _colour(row)
        stamp = row.at.strftime("%H:%M:%S.%f")[:12]
        if row.at.date() != previous_day:  # a new day: say which
            stamp = row.at.strftime("%m-%d ") + stamp[:8]
            previous_day = row.at.date()
        tip = f"{row.at.isoformat()} · {row.actor} · {row.action}" + (f" · {row.detail}" if row.detail else "")
        out.append(f'<g class="tl-row" data-action="{escape(row.action)}"><title>{escape(tip)}</title>')
        out.append(
            f'<text x="12" y="{y + 4}" fill="#57606a" font-family="ui-monospace, monospace" font-size="11">{escape(stamp)}</text>'
        )
        if row.live:
            out.append(f'<circle cx="{x}" cy="{y}" r="11" fill="{colour}"/>')
            out.append(
                f'<text x="{x}" y="{y + 4}" text-anchor="middle" fill="#fff" font-size="10" font-weight="700">{row.live:02d}</text>'
            )
        elif row.by_operator:
            out.append(
                f'<rect x="{x - 6}" y="{y - 6}" width="12" height="12" transform="rotate(45 {x} {y})" fill="{colour}"/>'
            )
        else:
            out.append(f'<circle cx="{x}" cy="{y}" r="6" fill="{colour}"/>')
        weight = ' font-weight="600"' if row.live or row.refused else ""
        out.append(
            f'<text x="{_TEXT_X}" y="{y}" fill="{colour if row.refused else "#1f2328"}"{weight}>{escape(_clip(row.label, 90))}</text>'
        )
        sub = f"{row.actor}" + (f" — {row.detail}" if row.detail else "")
        out.append(f'<text x="{_TEXT_X}" y="{y + 13}" fill="#57606a" font-size="10.5">{escape(_clip(sub, 125))}</text>')
        out.append("</g>")
    out.append("</svg>")
    return mark_safe("".join(out))  # noqa: S308 -- every interpolated string above is escaped
