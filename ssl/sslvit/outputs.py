"""Folders a command writes whole: an existing one is replaced only when asked, and never left half-written.

A tool that writes a set of files into ``--output`` (shards, an export) must not mix a new set with
an old one: a new shard set with fewer shards than the old would keep the old set's last shards next
to the new index, and a reader that lists the folder would take them. :func:`replace_folder` writes
the new set into a temporary sibling and swaps it in only once it is complete, so the folder holds
either the old set or the new one, never parts of both, whatever interrupts the command.

A single file is simpler: :func:`write_json` writes the JSON record of an evaluation tool's ``--output``.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sslvit.errors import on_interrupt


def _first_missing(folder: Path) -> Path | None:
    """The outermost of ``folder`` and its parents that does not exist yet (None when ``folder`` exists)."""
    missing = None
    for path in (folder, *folder.parents):
        if path.exists():
            break
        missing = path
    return missing


def check_folder(
    folder: str | Path, overwrite: bool, what: str, owned: Callable[[Path], bool], flag: str = "--overwrite"
) -> None:
    """Refuse (``FileExistsError``) an output ``folder`` that :func:`replace_folder` would refuse; writes nothing.

    A folder that holds files is refused unless ``overwrite``, and even then when a file in it is
    not ``owned`` (its path relative to ``folder`` is not a file of ``what``, e.g. of an earlier
    shard set), so that a mistyped output folder never deletes someone else's files.
    """
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise FileExistsError(f"{folder} is a file, not a folder: choose another output folder for the {what}")
    held = sorted(p.relative_to(folder) for p in folder.rglob("*") if not p.is_dir()) if folder.is_dir() else []
    if held and not overwrite:
        shown = ", ".join(str(p) for p in held[:3]) + (f" and {len(held) - 3} more" if len(held) > 3 else "")
        raise FileExistsError(
            f"{folder} already holds files ({shown}); pass {flag} to replace it whole with the new {what}, "
            "or choose another output folder"
        )
    foreign = [p for p in held if not owned(p)]
    if foreign:
        raise FileExistsError(
            f"{folder} holds files that are not part of an earlier {what} ({', '.join(str(p) for p in foreign[:3])}); "
            f"{flag} replaces only an earlier {what}: choose another output folder, or move those files away"
        )


@contextmanager
def replace_folder(
    folder: str | Path, overwrite: bool, what: str, owned: Callable[[Path], bool], flag: str = "--overwrite"
) -> Iterator[Path]:
    """Yield an empty temporary folder to write ``folder``'s new contents into; it becomes ``folder`` on success.

    ``folder`` is checked first (:func:`check_folder`: an existing one only with ``overwrite``, and
    only an earlier ``what``). On success the old folder is moved aside, the new one moved in and
    the old one deleted: nothing of the old set remains. On any failure, Ctrl-C included, the
    temporary folder and any parent folders created for it are removed and ``folder`` is as it was.
    """
    check_folder(folder, overwrite, what, owned, flag)
    folder = Path(folder)
    created = _first_missing(folder.parent)
    folder.parent.mkdir(parents=True, exist_ok=True)
    target = folder.resolve()  # a link to a folder keeps pointing at the (new) folder
    tag = uuid.uuid4().hex[:8]
    staging, old = target.with_name(f".{target.name}.{tag}.partial"), target.with_name(f".{target.name}.{tag}.old")
    staging.mkdir()  # the permissions a plain mkdir gives (the umask's), which the new folder keeps
    try:
        with on_interrupt(f"nothing was written to {folder}: a new {what} is moved in only once complete"):
            yield staging
        if target.exists():
            os.replace(target, old)  # moved aside whole, and deleted once the new set is in place
            try:
                os.replace(staging, target)
            except BaseException:
                os.replace(old, target)
                raise
            shutil.rmtree(old)
        else:
            os.replace(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        if created is not None:
            shutil.rmtree(created, ignore_errors=True)
        raise


def write_json(path: str | Path, record: dict[str, Any]) -> Path:
    """Write ``record`` as indented JSON to ``path`` (its folder created if needed)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=2) + "\n")
    return path
