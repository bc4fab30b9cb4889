"""Read the metadata of an ONNX file without onnxruntime or the ``onnx`` package.

sherpa-onnx ends the whole process (it calls ``exit``) when a transducer model lacks the metadata
it needs, instead of raising. The sherpa-onnx hotword engine therefore checks the metadata first,
and this module reads it: an ONNX file is a protobuf ``ModelProto`` whose field 14 holds
``metadata_props`` (key/value string pairs) and whose field 7 holds the graph. Only the top
level of the message is walked; the graph itself is skipped, not parsed.
"""

from __future__ import annotations

from pathlib import Path

_GRAPH_FIELD = 7
_METADATA_FIELD = 14
_KEY_FIELD = 1
_VALUE_FIELD = 2


class NotOnnxError(ValueError):
    """The bytes are not an ONNX model (not a protobuf message, or one without a graph)."""


def read_metadata(path: Path) -> dict[str, str]:
    """The ``metadata_props`` of the ONNX model in ``path``.

    Raises ``OSError`` if the file cannot be read and ``NotOnnxError`` if it is not an ONNX model.
    """
    data = path.read_bytes()
    meta: dict[str, str] = {}
    has_graph = False
    for field, value in _fields(data):
        if field == _GRAPH_FIELD and isinstance(value, bytes):
            has_graph = True
        elif field == _METADATA_FIELD and isinstance(value, bytes):
            entry = {f: v for f, v in _fields(value) if isinstance(v, bytes)}
            try:
                key = entry.get(_KEY_FIELD, b"").decode()
                meta[key] = entry.get(_VALUE_FIELD, b"").decode()
            except UnicodeDecodeError as exc:
                raise NotOnnxError("a metadata entry is not UTF-8 text") from exc
    if not has_graph:
        raise NotOnnxError("no graph in it")
    return meta


def _fields(data: bytes) -> list[tuple[int, int | bytes]]:
    """The (field number, value) pairs of one protobuf message: ints for varint and fixed-size
    fields, bytes for length-delimited ones."""
    out: list[tuple[int, int | bytes]] = []
    pos, end = 0, len(data)
    while pos < end:
        tag, pos = _varint(data, pos)
        field, wire = tag >> 3, tag & 7
        if field == 0:
            raise NotOnnxError(f"field number 0 at byte {pos}")
        if wire == 0:
            value, pos = _varint(data, pos)
            out.append((field, value))
        elif wire in (1, 5):
            size = 8 if wire == 1 else 4
            if pos + size > end:
                raise NotOnnxError("truncated")
            out.append((field, int.from_bytes(data[pos : pos + size], "little")))
            pos += size
        elif wire == 2:
            size, pos = _varint(data, pos)
            if pos + size > end:
                raise NotOnnxError("truncated")
            out.append((field, data[pos : pos + size]))
            pos += size
        else:
            raise NotOnnxError(f"wire type {wire} at byte {pos}")
    return out


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= len(data):
            raise NotOnnxError("truncated")
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7
        if shift > 63:
            raise NotOnnxError(f"a varint longer than 10 bytes at byte {pos}")
