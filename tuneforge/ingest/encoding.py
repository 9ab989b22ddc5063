"""Decode corpus bytes: UTF-8, UTF-8 with BOM and GB18030/GBK are detected; anything else is named."""

from __future__ import annotations

import codecs

from tuneforge.common.errors import SourceError


def decode(data: bytes, encoding: str, file: str) -> tuple[str, str]:
    """Return (text, encoding used). `auto` tries UTF-8 (BOM-aware), then GB18030, a superset of GBK."""
    if encoding != "auto":
        try:
            codecs.lookup(encoding)
        except LookupError:
            raise SourceError(f"{file}: unknown encoding {encoding!r} in the recipe") from None
        try:
            return data.decode(encoding), encoding
        except UnicodeDecodeError as e:
            raise SourceError(f"{file}: not valid {encoding} at byte {e.start}: {e.reason}") from None
    if data.startswith(codecs.BOM_UTF8):
        return data[len(codecs.BOM_UTF8):].decode("utf-8", errors="strict"), "utf-8-sig"
    if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        return data.decode("utf-16"), "utf-16"
    try:
        return data.decode("utf-8"), "utf-8"
    except UnicodeDecodeError as utf8_error:
        try:
            return data.decode("gb18030"), "gb18030"
        except UnicodeDecodeError:
            raise SourceError(
                f"{file}: neither UTF-8 (byte {utf8_error.start}: {utf8_error.reason}) nor GB18030; "
                f"set `encoding:` for this source in the recipe") from None


def decode_lines(data: bytes, encoding: str, file: str) -> tuple[list[str | None], str]:
    """Split into lines, decoding each on its own when the whole file is not one encoding.

    A line that cannot be decoded comes back as None so the reader can reject just that line; when most
    lines fail, the encoding is wrong and that is an error for the whole file.
    """
    try:
        text, used = decode(data, encoding, file)
        return text.splitlines(), used
    except SourceError as whole_file_error:
        enc = encoding if encoding != "auto" else "utf-8"
        lines: list[str | None] = []
        body = data[len(codecs.BOM_UTF8):] if data.startswith(codecs.BOM_UTF8) else data
        for raw in body.split(b"\n"):
            raw = raw.rstrip(b"\r")
            try:
                lines.append(raw.decode(enc))
            except UnicodeDecodeError:
                lines.append(None)
        if lines and lines[-1] == "":
            lines.pop()
        if sum(line is None for line in lines) * 2 > len(lines):
            # Mostly undecodable: the encoding is wrong, not a few lines damaged.
            raise whole_file_error from None
        return lines, f"{enc} (mixed: undecodable lines rejected)"
