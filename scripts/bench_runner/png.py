"""The ratios as a PNG bar chart, drawn without any plotting library."""
import math
import struct
import zlib
from pathlib import Path

from .scenarios import SCENARIOS


# 5x7 glyphs, one 5-bit row each, top to bottom.
FONT = {
    ' ': (0, 0, 0, 0, 0, 0, 0),
    '0': (14, 17, 19, 21, 25, 17, 14), '1': (4, 12, 4, 4, 4, 4, 14),
    '2': (14, 17, 1, 2, 4, 8, 31), '3': (31, 2, 4, 2, 1, 17, 14),
    '4': (2, 6, 10, 18, 31, 2, 2), '5': (31, 16, 30, 1, 1, 17, 14),
    '6': (6, 8, 16, 30, 17, 17, 14), '7': (31, 1, 2, 4, 8, 8, 8),
    '8': (14, 17, 17, 14, 17, 17, 14), '9': (14, 17, 17, 15, 1, 2, 12),
    'A': (14, 17, 17, 17, 31, 17, 17), 'B': (30, 17, 17, 30, 17, 17, 30),
    'C': (14, 17, 16, 16, 16, 17, 14), 'D': (28, 18, 17, 17, 17, 18, 28),
    'E': (31, 16, 16, 30, 16, 16, 31), 'F': (31, 16, 16, 30, 16, 16, 16),
    'G': (14, 17, 16, 23, 17, 17, 15), 'H': (17, 17, 17, 31, 17, 17, 17),
    'I': (14, 4, 4, 4, 4, 4, 14), 'J': (7, 2, 2, 2, 2, 18, 12),
    'K': (17, 18, 20, 24, 20, 18, 17), 'L': (16, 16, 16, 16, 16, 16, 31),
    'M': (17, 27, 21, 21, 17, 17, 17), 'N': (17, 17, 25, 21, 19, 17, 17),
    'O': (14, 17, 17, 17, 17, 17, 14), 'P': (30, 17, 17, 30, 16, 16, 16),
    'Q': (14, 17, 17, 17, 21, 18, 13), 'R': (30, 17, 17, 30, 20, 18, 17),
    'S': (15, 16, 16, 14, 1, 1, 30), 'T': (31, 4, 4, 4, 4, 4, 4),
    'U': (17, 17, 17, 17, 17, 17, 14), 'V': (17, 17, 17, 17, 17, 10, 4),
    'W': (17, 17, 17, 21, 21, 21, 10), 'X': (17, 17, 10, 4, 10, 17, 17),
    'Y': (17, 17, 17, 10, 4, 4, 4), 'Z': (31, 1, 2, 4, 8, 16, 31),
    'x': (0, 0, 17, 10, 4, 10, 17),
    '.': (0, 0, 0, 0, 0, 12, 12), ',': (0, 0, 0, 0, 12, 4, 8),
    ':': (0, 12, 12, 0, 12, 12, 0), '/': (0, 1, 2, 4, 8, 16, 0),
    '-': (0, 0, 0, 31, 0, 0, 0), '+': (0, 4, 4, 31, 4, 4, 0),
    '(': (2, 4, 8, 8, 8, 4, 2), ')': (8, 4, 2, 2, 2, 4, 8),
    '%': (24, 25, 2, 4, 8, 19, 3), '<': (2, 4, 8, 16, 8, 4, 2),
    '>': (8, 4, 2, 1, 2, 4, 8), '=': (0, 0, 31, 0, 31, 0, 0),
    '_': (0, 0, 0, 0, 0, 0, 31), "'": (4, 4, 8, 0, 0, 0, 0),
    '?': (14, 17, 1, 2, 4, 0, 4),
}


class Canvas:
    def __init__(self, width, height, color=(255, 255, 255)):
        self.width, self.height = width, height
        self.rows = [bytearray(bytes(color) * width) for _ in range(height)]

    def rect(self, x0, y0, x1, y1, color):
        x0, x1 = max(0, min(x0, x1)), min(self.width, max(x0, x1))
        y0, y1 = max(0, min(y0, y1)), min(self.height, max(y0, y1))
        if x1 <= x0:
            return
        span = bytes(color) * (x1 - x0)
        for y in range(y0, y1):
            self.rows[y][x0 * 3:x1 * 3] = span

    def text(self, x, y, text, color=(0, 0, 0), scale=2):
        """Draw *text* (upper-cased, except a small x) at top-left x, y."""
        for char in text.replace('µ', 'u'):
            glyph = FONT.get(char if char == 'x' else char.upper(), FONT['?'])
            for row, bits in enumerate(glyph):
                for col in range(5):
                    if bits & (16 >> col):
                        self.rect(x + col * scale, y + row * scale,
                                  x + (col + 1) * scale, y + (row + 1) * scale,
                                  color)
            x += 6 * scale
        return x

    def png(self):
        raw = b''.join(b'\0' + bytes(row) for row in self.rows)

        def chunk(kind, data):
            return (struct.pack('>I', len(data)) + kind + data
                    + struct.pack('>I', zlib.crc32(kind + data) & 0xffffffff))
        header = struct.pack('>IIBBBBB', self.width, self.height, 8, 2, 0, 0, 0)
        return (b'\x89PNG\r\n\x1a\n' + chunk(b'IHDR', header)
                + chunk(b'IDAT', zlib.compress(raw, 9)) + chunk(b'IEND', b''))


def plot(report, path):
    """Horizontal bars: how many times better ours is than ZEO 6.2 (log2
    scale, right is better), with each goal as a black tick."""
    metrics = {m.name: m for s in SCENARIOS for m in s.metrics}
    results = report['results']
    row, top, left, width = 36, 70, 420, 480
    extra = 2 if report['floor_us'] else 0
    canvas = Canvas(1180, top + row * len(results) + 70 + 22 * extra)
    green, red, grey = (46, 160, 67), (214, 39, 40), (150, 150, 150)
    span = 4                                   # 1/16 .. 16

    def x_of(factor):
        value = max(-span, min(span, math.log2(factor)))
        return int(left + (value + span) / (2 * span) * width)

    mode = 'QUICK RUN' if report['quick'] else 'FULL RUN'
    canvas.text(10, 10, f'ZEO (OURS) VS ZEO 6.2, SAME MACHINE, {mode}: '
                        f'HOW MANY TIMES BETTER (LOG SCALE)')
    canvas.text(10, 34, 'BAR: MEASURED, BLACK TICK: GOAL, '
                        'GREEN: MET, RED: NOT MET', color=(80, 80, 80))
    bottom = top + row * len(results)
    for power in range(-span, span + 1):
        x = x_of(2 ** power)
        canvas.rect(x, top - 4, x + 1, bottom, (225, 225, 225)
                    if power else (0, 0, 0))
        label = f'{2 ** power:g}' if power >= 0 else f'1/{2 ** -power}'
        canvas.text(x - len(label) * 6, bottom + 8, label)
    canvas.text(left + width // 2 - 150, bottom + 32,
                '<- WORSE      x BETTER ->', color=(80, 80, 80))
    for n, r in enumerate(results):
        y = top + n * row
        encoding = r.get('encoding')
        canvas.text(10, y + 10, (f"{encoding} {r['title']}" if encoding else r['title'])[:33])
        metric = metrics[r['name']]
        if r['ours'] is None or not r['zeo']:
            canvas.text(left + 10, y + 10, 'NO DATA', color=grey)
            continue
        better = metric.better(r['ours'], r['zeo'])
        goal = metric.goal_better(r['zeo'], report['floor_us'])
        color = green if r['met'] else red
        canvas.rect(x_of(1), y + 9, x_of(better), y + 27, color)
        if goal:
            gx = x_of(goal)
            canvas.rect(gx - 1, y + 3, gx + 2, y + 33, (0, 0, 0))
        if metric.goal[0] == 'ours_max':
            label = (f"{r['ours']:.3g} {metric.unit} "
                     f"(GOAL < {metric.goal[1]:g} {metric.unit})")
        else:
            shown = f'{better:.2f}' if better < 10 else f'{better:.0f}'
            label = f'{shown}x (GOAL {goal:.2g}x)' if goal else f'{shown}x'
            if metric.floor_key and r.get('floor_ratio'):
                # Its goal is against the floor: say where it stands there.
                label = f"{r['floor_ratio']:.2f}x FLOOR, GOAL {metric.goal[1]:g}"
        canvas.text(left + width + 14, y + 10, label)
    floor = report['floor_us']
    if floor:
        y = bottom + 60
        canvas.text(10, y, 'FLOOR, ECHO OVER LOOPBACK: BLOCKING '
                           f"{floor.get('blocking', 0):.1f} US, ASYNCIO "
                           f"{floor.get('asyncio', 0):.1f} US, BUFFERED "
                           f"{floor.get('asyncio_buffered', 0):.1f} US",
                    color=(80, 80, 80))
        ping = next((r for r in results if r['name'] == 'ping'), None)
        if ping and ping['ours'] and ping['zeo']:
            canvas.text(10, y + 22, f"PING {ping.get('encoding', '')}: OURS {ping['ours']:.1f} US, "
                                    f"ZEO 6.2 {ping['zeo']:.1f} US",
                        color=(80, 80, 80))
    Path(path).write_bytes(canvas.png())
