"""Labels beside scatter points that overlap neither each other nor the points: each label tries
offsets around its point (near first, farther ones with a thin leader line) and takes the first
free one inside the axes; a label with no free place is left out and counted."""
from __future__ import annotations

# (distance in points, with a leader line); directions: the four diagonals first, then the sides
RINGS = ((5, False), (14, True), (26, True), (40, True))
DIRECTIONS = ((1, 1), (1, -1), (-1, 1), (-1, -1), (1, 0), (-1, 0), (0, 1), (0, -1))
MARKER_RADIUS_PT = 4.0  # a little more than a 30 pt^2 scatter marker's radius


def _alignment(dx: int, dy: int) -> dict:
    return {"ha": "left" if dx > 0 else "right" if dx < 0 else "center",
            "va": "bottom" if dy > 0 else "top" if dy < 0 else "center"}


def place_labels(ax, points: list[tuple[float, float]], texts: list[str], fontsize: float = 6.0) -> int:
    """Annotate points[i] with texts[i], in list order (put the most important first). The figure's
    layout must be final (drawn once): placement works in display coordinates. The labels stay out
    of the layout, so placing them moves nothing. Returns how many labels found no free place."""
    fig = ax.figure
    renderer = fig.canvas.get_renderer()
    to_px = fig.dpi / 72.0
    frame = ax.get_window_extent(renderer)
    centres = [ax.transData.transform(p) for p in points]
    r = MARKER_RADIUS_PT * to_px
    taken = [(cx - r, cy - r, cx + r, cy + r) for cx, cy in centres]
    hidden = 0
    for (x, y), text in zip(points, texts):
        placed = False
        for distance, leader in RINGS:
            for dx, dy in DIRECTIONS:
                offset = (dx * distance, dy * distance)
                ann = ax.annotate(text, (x, y), xytext=offset, textcoords="offset points", fontsize=fontsize,
                                  annotation_clip=False, **_alignment(dx, dy))
                box = ann.get_window_extent(renderer).padded(1.0)
                inside = frame.x0 <= box.x0 and box.x1 <= frame.x1 and frame.y0 <= box.y0 and box.y1 <= frame.y1
                free = inside and not any(box.x0 < b[2] and b[0] < box.x1 and box.y0 < b[3] and b[1] < box.y1
                                          for b in taken)
                ann.remove()
                if not free:
                    continue
                ann = ax.annotate(text, (x, y), xytext=offset, textcoords="offset points", fontsize=fontsize,
                                  annotation_clip=False, gid="point-label", **_alignment(dx, dy),
                                  arrowprops={"arrowstyle": "-", "lw": 0.5, "color": "0.35",
                                              "shrinkA": 0, "shrinkB": 2} if leader else None)
                ann.set_in_layout(False)
                taken.append((box.x0, box.y0, box.x1, box.y1))
                placed = True
                break
            if placed:
                break
        hidden += not placed
    return hidden
