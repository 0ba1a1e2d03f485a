"""A folder of images plus a tags file -> manifest rows (the user's own dataset).

Tags file, chosen by extension:
  * CSV (``.csv``, header ``file,labels``; labels joined by ``;`` or ``|``)
  * JSONL (``.jsonl`` / ``.ndjson``; one ``{"file": ..., "labels": [...]}`` per line)
A label is a class name or an integer class id. Without ``class_names`` the class list
is the sorted set of names seen; if every label is an integer, the ids are used as they
are and named "0", "1", ...
"""
from __future__ import annotations

import csv
import io
import json
import posixpath
import re
from dataclasses import dataclass

from wsss_ray.data.classmap import ErrorCollector, stable_id
from wsss_ray.data.errors import ErrorRecord, ItemError
from wsss_ray.data.images import absolute_root, image_size, read_bytes
from wsss_ray.store import join_uri, uri_exists
from wsss_ray.data.manifest import ClassSpace, ManifestRow

_INT = re.compile(r"[+-]?\d+")


@dataclass
class _Entry:
    where: str      # "<tags file>:<line>", for error records
    file: str = ""
    tokens: list = ()       # str names or int ids, as written
    problem: str = ""       # a line that could not be parsed: reported in line order


def _tokens_from_text(text: str) -> list:
    return [t.strip() for t in re.split(r"[;|]", text) if t.strip()]


def _read_csv(text: str, uri: str) -> list[_Entry]:
    reader = csv.DictReader(io.StringIO(text))
    fields = [f.strip().lower() for f in (reader.fieldnames or [])]
    if "file" not in fields or "labels" not in fields:
        raise ItemError(uri, f"CSV header must name 'file' and 'labels' columns, got {reader.fieldnames}")
    reader.fieldnames = fields
    entries = []
    for row in reader:
        where = f"{uri}:{reader.line_num}"
        file, labels = row.get("file"), row.get("labels")
        if file is None or labels is None or None in row:
            entries.append(_Entry(where, problem="malformed CSV line (wrong number of fields)"))
        else:
            entries.append(_Entry(where, file.strip(), _tokens_from_text(labels)))
    return entries


def _read_jsonl(text: str, uri: str) -> list[_Entry]:
    entries = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        where = f"{uri}:{n}"
        try:
            obj = json.loads(line)
        except ValueError as e:
            entries.append(_Entry(where, problem=f"malformed JSON line: {e}"))
            continue
        labels = obj.get("labels") if isinstance(obj, dict) else None
        if isinstance(labels, str):
            labels = _tokens_from_text(labels)
        file = obj.get("file") if isinstance(obj, dict) else None
        if not isinstance(file, str) or not isinstance(labels, list):
            entries.append(_Entry(where, problem="malformed line: needs a string 'file' and a list 'labels'"))
            continue
        entries.append(_Entry(where, file.strip(), labels))
    return entries


def _read_tags(uri: str) -> list[_Entry]:
    try:
        text = read_bytes(uri).decode("utf-8-sig")  # -sig: Excel writes a BOM
    except UnicodeDecodeError as e:
        raise ItemError(uri, f"tags file is not UTF-8 text: {e}") from e
    ext = uri.rsplit(".", 1)[-1].lower()
    if ext == "csv":
        return _read_csv(text, uri)
    if ext in ("jsonl", "ndjson"):
        return _read_jsonl(text, uri)
    raise ItemError(uri, "tags file must end in .csv, .jsonl or .ndjson")


def _as_int(token) -> int | None:
    if isinstance(token, bool):
        return None
    if isinstance(token, int):
        return token
    return int(token) if isinstance(token, str) and _INT.fullmatch(token) else None


def _infer_names(entries: list[_Entry]) -> list[str]:
    # malformed lines carry no tokens, so they add no names
    names = {t for e in entries for t in e.tokens if isinstance(t, str) and _as_int(t) is None}
    if names:
        return sorted(names)
    ids = [_as_int(t) for e in entries for t in e.tokens]
    ids = [i for i in ids if i is not None and i >= 0]
    return [str(i) for i in range(max(ids) + 1)] if ids else []


def _resolve(token, index: dict[str, int], num: int, ints_ok: bool) -> int:
    """Class id of one label (a name first, then an id); ValueError says why not."""
    if isinstance(token, str) and token in index:
        return index[token]
    as_int = _as_int(token)
    if as_int is None:
        raise ValueError(f"unknown class {token!r}")
    if not ints_ok:
        # names were inferred from the file: their ids are not the user's to know
        raise ValueError(f"integer label {as_int} needs class_names")
    if not 0 <= as_int < num:
        raise ValueError(f"class id {as_int} outside 0..{num - 1}")
    return as_int


def _entry_row(e: _Entry, images_dir, masks_dir, index, num, ints_ok) -> ManifestRow:
    if e.problem:
        raise ItemError(e.where, e.problem)
    if not e.file:
        raise ItemError(e.where, "empty file name")
    if not e.tokens:
        raise ItemError(e.where, f"no labels for {e.file}")
    try:
        labels = sorted({_resolve(t, index, num, ints_ok) for t in e.tokens})
    except ValueError as err:
        raise ItemError(e.where, f"{err} (file {e.file})") from err
    rel = posixpath.normpath(e.file.replace("\\", "/"))
    uri = join_uri(images_dir, rel)
    h, w = image_size(uri)  # raises ItemError naming the file when missing/unreadable
    mask_uri = None
    if masks_dir:
        candidate = join_uri(masks_dir, f"{posixpath.splitext(rel)[0]}.png")
        mask_uri = candidate if uri_exists(candidate) else None
    # the id hashes the relative path: stable across reruns and machines
    return ManifestRow(stable_id(rel), uri, labels, mask_uri, "train", h, w)


def build_folder_manifest(images_dir: str, tags_file: str, class_names: list[str] | None = None,
                          masks_dir: str = "", strict: bool = False
                          ) -> tuple[list[ManifestRow], ClassSpace, list[ErrorRecord]]:
    """Rows in tags-file order; masks, when given, are ``<masks_dir>/<stem>.png``."""
    images_dir = absolute_root(images_dir)
    masks_dir = absolute_root(masks_dir) if masks_dir else ""
    entries = _read_tags(absolute_root(tags_file))
    names = list(class_names) if class_names is not None else _infer_names(entries)
    ints_ok = class_names is not None or all(_as_int(n) is not None for n in names)
    index = {n: i for i, n in enumerate(names)}
    errors = ErrorCollector(strict)
    rows, seen = [], set()
    for e in entries:
        try:
            row = _entry_row(e, images_dir, masks_dir, index, len(names), ints_ok)
        except ItemError as err:
            errors.add_error(err)
            continue
        if row.image_id in seen:
            errors.add(e.where, f"duplicate entry for {e.file}; first one kept")
            continue
        seen.add(row.image_id)
        rows.append(row)
    return rows, ClassSpace("folder", tuple(names)), errors.records
