"""One palette for the whole dashboard: every label, status and influence sign has one colour and one
display name, so "contradiction" is the same red on the table, the chart and the influence lists."""

from __future__ import annotations

LABEL_COLORS: dict[str, str] = {
    "entailment": "#2b8a3e",
    "neutral": "#868e96",
    "contradiction": "#c92a2a",
    "non-entailment": "#e8590c",
}
UNKNOWN_COLOR = "#495057"

# st.markdown colour names (":green[...]") closest to LABEL_COLORS, for inline text and badges.
LABEL_MD: dict[str, str] = {
    "entailment": "green",
    "neutral": "gray",
    "contradiction": "red",
    "non-entailment": "orange",
}

STATUS_MD: dict[str, str] = {
    "queued": "blue",
    "running": "violet",
    "done": "green",
    "failed": "red",
    "cancelled": "gray",
}
STATUS_HEX: dict[str, str] = {
    "queued": "#1971c2",
    "running": "#7048e8",
    "done": "#2b8a3e",
    "failed": "#c92a2a",
    "cancelled": "#868e96",
}
STATUS_ICON: dict[str, str] = {
    "queued": "⏳",
    "running": "⚙️",
    "done": "✅",
    "failed": "❌",
    "cancelled": "⏹️",
}

HELPFUL_COLOR = "#1971c2"  # negative influence: lowers the test loss
HARMFUL_COLOR = "#c92a2a"  # positive influence: raises the test loss


def label_color(label: str | None) -> str:
    """Hex colour of a label name (a neutral grey for unknown or missing labels)."""
    return LABEL_COLORS.get(label or "", UNKNOWN_COLOR)


def label_badge(label: str | None) -> str:
    """Markdown for a coloured label badge, e.g. ``:green-badge[entailment]``; "—" when missing."""
    if not label:
        return "—"
    return f":{LABEL_MD.get(label, 'gray')}-badge[{label}]"


def status_badge(status: str) -> str:
    """Markdown for a job status badge with its icon."""
    return f":{STATUS_MD.get(status, 'gray')}-badge[{STATUS_ICON.get(status, '')} {status}]"


def label_cell_style(value: object) -> str:
    """A pandas Styler cell style colouring a label name (used by the tables)."""
    if isinstance(value, str) and value in LABEL_COLORS:
        return f"color: {LABEL_COLORS[value]}; font-weight: 600"
    return ""


def status_cell_style(value: object) -> str:
    """A pandas Styler cell style colouring a job status."""
    color = STATUS_HEX.get(value) if isinstance(value, str) else None
    return f"color: {color}; font-weight: 600" if color else ""
