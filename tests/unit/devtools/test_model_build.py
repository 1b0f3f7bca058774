from __future__ import annotations

import struct

import numpy as np

from serve_app.devtools.model_build import _dequantize_q4_0


def test_q4_0_block_layout() -> None:
    """Byte j holds weight j (low nibble) and weight j+16 (high nibble), value - 8, times the fp16 scale."""
    scale = np.float16(0.5)
    nibbles = bytes(((j % 16) | ((15 - j % 16) << 4)) for j in range(16))
    raw = struct.pack("<e", scale) + nibbles
    row = _dequantize_q4_0(memoryview(raw), 1, 32)[0]
    expected_low = [(j % 16 - 8) * 0.5 for j in range(16)]
    expected_high = [((15 - j % 16) - 8) * 0.5 for j in range(16)]
    assert row.tolist() == expected_low + expected_high
