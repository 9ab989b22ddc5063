"""Decode corpus bytes: UTF-8, UTF-8 with BOM and GB18030/GBK are detected; anything else is named. The
planner names a whole file's encoding here too (`file_encoding`), from its one scan."""

from __future__ import annotations

import codecs
from pathlib import Path

from tuneforge.common.errors import SourceError
from tuneforge.ingest.config import SourceConfig
from tuneforge.ingest.scan import CHUNK, Scan


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


def _check_codec(enc: str, path: Path) -> None:
    try:
        codecs.lookup(enc)
    except LookupError:
        raise SourceError(f"{path}: unknown encoding {enc!r} in the recipe") from None


def _whole_file_decodes(path: Path, enc: str) -> bool:
    dec = codecs.getincrementaldecoder(enc)("strict")
    try:
        with open(path, "rb") as f:
            while chunk := f.read(CHUNK):
                dec.decode(chunk)
        dec.decode(b"", final=True)
        return True
    except UnicodeDecodeError:
        return False


def file_encoding(path: Path, cfg: SourceConfig, scan: Scan, kind: str) -> str:
    """The file's encoding; `utf-8|mixed` when only some lines are not UTF-8 (those lines are rejected)."""
    if cfg.encoding != "auto":
        _check_codec(cfg.encoding, path)
        bad = _first_error(path, cfg.encoding)
        if bad is None:
            return cfg.encoding
        if kind == "jsonl" and _mostly_decodes(path, cfg.encoding):
            return f"{cfg.encoding}|mixed"
        raise SourceError(f"{path}: not valid {cfg.encoding} at byte {bad[0]}: {bad[1]}; check `encoding:` for this "
                          f"source in the recipe")
    head = scan.head
    if head.startswith(codecs.BOM_UTF8):
        return "utf-8-sig" if scan.utf8 else _fallback(path, kind)
    if head.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        return "utf-16"
    return "utf-8" if scan.utf8 else _fallback(path, kind)


def _first_error(path: Path, enc: str) -> tuple[int, str] | None:
    """(byte offset, reason) of the first byte that is not valid `enc`, or None."""
    dec = codecs.getincrementaldecoder(enc)("strict")
    done = 0
    try:
        with open(path, "rb") as f:
            while chunk := f.read(CHUNK):
                try:
                    dec.decode(chunk)
                except UnicodeDecodeError as e:
                    return done + e.start, e.reason
                done += len(chunk)
        dec.decode(b"", final=True)
    except UnicodeDecodeError as e:
        return done + e.start, e.reason
    return None


def _mostly_decodes(path: Path, enc: str) -> bool:
    """Do at least half the lines decode? (A few damaged lines are rejected; a wrong encoding is an error.)"""
    bad = total = 0
    with open(path, "rb") as f:
        for raw in f:
            total += 1
            try:
                raw.decode(enc)
            except UnicodeDecodeError:
                bad += 1
    return bad * 2 <= total


def _fallback(path: Path, kind: str) -> str:
    if _whole_file_decodes(path, "gb18030"):
        return "gb18030"
    if kind == "jsonl" and _mostly_decodes(path, "utf-8"):
        return "utf-8|mixed"
    raise SourceError(f"{path}: neither UTF-8 nor GB18030; set `encoding:` for this source in the recipe")
