"""The one LEB128 decoder (``relive.elf.leb128``), on the DWARF standard's own examples."""

from __future__ import annotations

import mmap

import pytest

from relive.elf.leb128 import Leb128Error, read_sleb, read_uleb

#: DWARF 5, section 7.6, tables 7.8 and 7.9.
UNSIGNED = [(2, "02"), (127, "7f"), (128, "8001"), (129, "8101"), (130, "8201"), (12857, "b964")]
SIGNED = [(2, "02"), (-2, "7e"), (127, "ff00"), (-127, "817f"), (128, "8001"), (-128, "807f")]


@pytest.mark.parametrize(("value", "encoded"), UNSIGNED)
def test_unsigned(value: int, encoded: str) -> None:
    data = b"\xaa" + bytes.fromhex(encoded) + b"\xaa"
    assert read_uleb(data, 1) == (value, 1 + len(encoded) // 2)


@pytest.mark.parametrize(("value", "encoded"), SIGNED)
def test_signed(value: int, encoded: str) -> None:
    data = bytes.fromhex(encoded)
    assert read_sleb(data, 0) == (value, len(data))


def test_a_number_past_the_end_of_its_window_is_an_error() -> None:
    with pytest.raises(Leb128Error):
        read_uleb(b"\x80\x80", 0)
    with pytest.raises(Leb128Error):
        read_uleb(b"", 0)
    # Within a window of a larger buffer: the bytes after ``end`` do not count.
    with pytest.raises(Leb128Error):
        read_sleb(bytes.fromhex("b964"), 0, end=1)
    assert read_uleb(bytes.fromhex("00b964"), 1, end=3) == (12857, 3)


def test_a_mapping_reads_like_bytes() -> None:
    with mmap.mmap(-1, 4) as mapping:
        mapping[:3] = bytes.fromhex("b96400")
        assert read_uleb(mapping, 0, 3) == (12857, 2)
