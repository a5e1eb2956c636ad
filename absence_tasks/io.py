"""Files in, files out, errors out: the one atomic writer, output-path checks, file locks and the
one-line error exit every command shares.

* `atomic_write` writes a temp file `.NAME.<pid>-XXXX.tmp` beside the target and renames it over the
  target, so a reader never sees half a file and a killed writer leaves the old file as it was. The new
  file gets the mode an ordinary `open()` would give it (the umask), or the mode of the file it
  replaces. A temp file whose writer process is gone (a SIGKILL between create and rename) is deleted
  by the next write to the same target.
* `check_output` runs before a command does any work: the output's folder must exist or be creatable
  and be writable (tried, not guessed: root passes `os.access` everywhere), the output must not be a
  folder, and it must not be one of the command's inputs (symlinks resolved).
* `locked` holds an exclusive lock (a `.NAME.lock` file beside the target) across a read-modify-write,
  so concurrent writers of one file queue instead of losing each other's changes.
* `run_command` turns a command's expected failures into one `PROGRAM: error: ...` line and exit code
  2, and Ctrl-C into one line and exit code 130.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import tempfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import IO

EXIT_ERROR = 2
EXIT_INTERRUPTED = 130  # what a shell reports for a process ended by SIGINT


class DataError(ValueError):
    """Bad input data. The message names the file (and line) and the problem in one line."""


# ---- writing ----------------------------------------------------------------------------------

def _temp_prefix(path: Path) -> str:
    return f".{path.name}."


def _temp_pattern(path: Path) -> re.Pattern[str]:
    return re.compile(re.escape(_temp_prefix(path)) + r"(\d+)-[^.]+\.tmp")


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


def sweep_stale_temp_files(path: str | os.PathLike) -> list[Path]:
    """Delete the temp files of earlier writes to `path` whose writer process no longer runs."""
    path = Path(path)
    pattern = _temp_pattern(path)
    removed = []
    with contextlib.suppress(OSError):
        for candidate in path.parent.iterdir():
            match = pattern.fullmatch(candidate.name)
            if match and int(match.group(1)) != os.getpid() and not _process_alive(int(match.group(1))):
                with contextlib.suppress(FileNotFoundError):
                    candidate.unlink()
                    removed.append(candidate)
    return removed


def _umask() -> int:
    # Linux reports it; elsewhere os.umask can only be read by setting it (and straight back), which
    # another thread creating a file in that instant would notice.
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def default_file_mode() -> int:
    """What `open()` gives a new file under the current umask."""
    return 0o666 & ~_umask()


def new_file_mode(path: str | os.PathLike) -> int:
    """The mode a rewrite of `path` should have: the existing file's, else what the umask allows."""
    try:
        return os.stat(path).st_mode & 0o7777
    except FileNotFoundError:
        return default_file_mode()


def new_directory_mode() -> int:
    return 0o777 & ~_umask()


def atomic_write(path: str | os.PathLike, fill: Callable[[IO[bytes]], None]) -> None:
    """Let `fill` write the content of `path` into a binary file object; the target is replaced only
    when it returned. Any failure (Ctrl-C included) removes the temp file and leaves the target as it was."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sweep_stale_temp_files(path)
    mode = new_file_mode(path)
    fd, tmp = tempfile.mkstemp(prefix=f"{_temp_prefix(path)}{os.getpid()}-", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as f:
            fill(f)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | os.PathLike, text: str | Iterable[str]) -> None:
    """Write UTF-8 text (one string, or pieces of it) all at once."""
    pieces = [text] if isinstance(text, str) else text

    def fill(f: IO[bytes]) -> None:
        for piece in pieces:
            f.write(piece.encode("utf-8"))

    atomic_write(path, fill)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    atomic_write(path, lambda f: f.write(data))


@contextlib.contextmanager
def locked(path: str | os.PathLike) -> Iterator[None]:
    """Hold an exclusive lock on `path` (through `.NAME.lock` beside it) for a read-modify-write."""
    from filelock import FileLock

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(path.with_name(f".{path.name}.lock"), mode=new_file_mode(path)):
        yield


# ---- checking outputs before the work --------------------------------------------------------

def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b.resolve() or os.path.samefile(a, b)
    except OSError:
        return False


def check_writable_folder(folder: str | os.PathLike, what: str) -> None:
    """`folder` exists as a folder (or can be made: its nearest existing ancestor is a folder) and a file
    can be created in it. `what` names the output in the message."""
    folder = Path(folder)
    existing = folder
    while not existing.exists():
        if existing.parent == existing:
            break
        existing = existing.parent
    if not existing.is_dir():
        raise DataError(f"{what}: {existing} is not a folder")
    try:
        # Try it: permission bits do not tell (root passes os.access on read-only file systems).
        with tempfile.TemporaryFile(prefix=".write-check-", dir=existing):
            pass
    except OSError as e:
        raise DataError(f"{what}: cannot write in {existing} ({e.strerror})") from None


def check_output(path: str | os.PathLike, inputs: Iterable[str | os.PathLike | None] = ()) -> None:
    """Raise DataError (one line) unless `path` can be written as an output file without destroying an
    input: not a folder, in a writable folder, not the same file as any of `inputs`."""
    path = Path(path)
    for source in inputs:
        if source is not None and _same_file(path, Path(source)):
            raise DataError(f"{path}: the output is the input {source}; writing it would destroy the input")
    if path.is_dir():
        raise DataError(f"{path}: is a folder; the output must be a file")
    check_writable_folder(path.parent, str(path))


def check_output_folder(folder: str | os.PathLike, inputs: Iterable[str | os.PathLike | None] = (),
                        names: Iterable[str] = ()) -> None:
    """Like `check_output` for a command that writes `names` into `folder`."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise DataError(f"{folder}: not a folder")
    check_writable_folder(folder, str(folder))
    inputs = list(inputs)
    for name in names:
        check_output(folder / name, inputs)


# ---- exiting ------------------------------------------------------------------------------------

def error_line(error: BaseException) -> str:
    """An error as one line: an OSError as `FILE: reason`, anything else its message, newlines folded."""
    if isinstance(error, OSError) and error.strerror:
        text = f"{error.filename}: {error.strerror}" if error.filename else error.strerror
    else:
        text = str(error) or type(error).__name__
    return " ".join(text.split())


def run_command(program: str | None, command: Callable[[], object],
                handled: tuple[type[BaseException], ...] = (ValueError, OSError)) -> int:
    """Run `command`; an error of the `handled` kinds is one `PROGRAM: error: ...` line on stderr (just
    `error: ...` without a program name) and exit code 2, Ctrl-C one line and 130. Anything else is a
    bug and keeps its traceback."""
    prefix = f"{program}: error: " if program else "error: "
    try:
        command()
    except KeyboardInterrupt:
        # A progress bar may have been cut mid-line: the message starts on a line of its own.
        print(f"\n{prefix}interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except handled as e:
        print(f"{prefix}{error_line(e)}", file=sys.stderr)
        return EXIT_ERROR
    return 0
