"""Data sets: where they are found, how they are checked, downloaded and read.

A data set lives in a directory of its own (``wikitext-2-raw/``, ``sst2/``, ``tinyshakespeare/``)
under a *data root*. :func:`resolve` looks for it, in this order:

1. the explicit ``data_dir`` argument (the CLIs' ``--data-dir``),
2. the directory named by the environment variable ``QSLM_DATA_DIR``,
3. the user cache, ``$XDG_CACHE_HOME/qslm/data`` (by default ``~/.cache/qslm/data``),
4. a download from the canonical source into the user cache (only if ``download=True``).

In places 1 and 2 the root may hold the data set's directory (``ROOT/wikitext-2-raw/...``, the
layout of ``/work/shared/data``), a directory with the name the official archive uses (GLUE's
``ROOT/SST-2/``), or be that directory itself (``--data-dir .../wikitext-2-raw``). A place counts
only if it holds *every* file of the data set; otherwise the next place is tried, and the final
error says what each place lacked.

Every file found is checked against the size and sha256 of the official file (the table of
``/work/shared/data/README.md``). Hashing is done once per process per file: the result is kept,
keyed by the file's path, size, mtime and inode, so a file that changes is hashed again. A
mismatch raises :class:`~qslm.errors.ChecksumError` naming the file, where it was found, the
expected and actual sha256 and how to fix it; nothing falls back silently to another copy.

Downloads go into a temporary directory inside the cache, are checksummed (the archive when its
sha256 is known, and always every extracted file), and only then are moved into place with a
rename. A failed, corrupt or interrupted download therefore leaves nothing in the cache.

The registry :data:`DATASETS` maps names to frozen :class:`Dataset` records; every public function
takes ``registry=`` so that tests (or mirrors) can substitute URLs and checksums.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import shutil
import tempfile
import urllib.error
import urllib.request
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from tqdm.auto import tqdm

from qslm.errors import ChecksumError, DataNotFoundError, DatasetError, DownloadError

__all__ = [
    "DATASETS",
    "DATA_DIR_ENV",
    "DataFile",
    "Dataset",
    "Source",
    "data_file",
    "default_cache_dir",
    "get_dataset",
    "load_sst2",
    "load_text",
    "load_wikitext2",
    "read_sst2_tsv",
    "resolve",
]

DATA_DIR_ENV = "QSLM_DATA_DIR"
"""Environment variable naming a data root (place 2 of the resolution order)."""

TINYSHAKESPEARE_TRAIN_FRACTION = 0.9
"""Tiny Shakespeare has no official split: ``train`` is the first 90 % of its characters and
``valid`` the rest (the char-rnn / nanoGPT convention)."""

_DOWNLOAD_TIMEOUT_S = 60.0  # per socket operation, not for the whole transfer
_CHUNK_BYTES = 1 << 20
_VALID_SPLIT_NAMES = ("valid", "validation", "val", "dev")  # one concept, several spellings


# --- registry -----------------------------------------------------------------------------------


def _check_sha256(value: str, what: str) -> None:
    if len(value) != 64 or any(c not in "0123456789abcdef" for c in value):
        raise DatasetError(f"{what}: sha256 must be 64 lower-case hex digits, got {value!r}")


@dataclass(frozen=True)
class DataFile:
    """One file of a data set, as the official release ships it."""

    split: str  # "train", "valid", "test", "dev" or "all" (a data set with a single file)
    name: str  # file name inside the data set's directory, e.g. "wiki.test.raw"
    size_bytes: int  # exact size of the official file
    sha256: str  # hex sha256 of the official file
    member: str | None = None  # path inside the download archive; None when the download is the file

    def __post_init__(self) -> None:
        if not self.name or "/" in self.name or "\\" in self.name or self.name in (".", ".."):
            raise DatasetError(f"DataFile.name must be a plain file name, got {self.name!r}")
        if self.size_bytes < 0:
            raise DatasetError(f"DataFile {self.name}: size_bytes must be >= 0, got {self.size_bytes}")
        _check_sha256(self.sha256, f"DataFile {self.name}")


@dataclass(frozen=True)
class Source:
    """Where a data set is downloaded from."""

    url: str  # canonical download URL
    kind: Literal["zip", "file"]  # "zip": an archive whose members are the files; "file": the file itself
    sha256: str | None = None  # of the downloaded archive; None when unknown (the files are still checked)
    size_bytes: int | None = None  # of the downloaded archive, for the message and the progress bar

    def __post_init__(self) -> None:
        if self.kind not in ("zip", "file"):
            raise DatasetError(f"Source.kind must be 'zip' or 'file', got {self.kind!r}")
        if self.sha256 is not None:
            _check_sha256(self.sha256, f"Source {self.url}")


@dataclass(frozen=True)
class Dataset:
    """A data set: its directory, its files with their checksums, and its canonical source."""

    name: str  # registry key, e.g. "wikitext-2-raw"
    dirname: str  # directory under a data root, e.g. "wikitext-2-raw"
    files: tuple[DataFile, ...]  # every file; a place holds the data set only if it has them all
    source: Source | None  # canonical download; None: cannot be downloaded
    dir_aliases: tuple[str, ...] = ()  # other directory names accepted under a data root ("SST-2")
    description: str = ""

    def __post_init__(self) -> None:
        if not self.files:
            raise DatasetError(f"data set {self.name!r} has no files")
        splits = [f.split for f in self.files]
        if len(set(splits)) != len(splits):
            raise DatasetError(f"data set {self.name!r}: duplicate split names {splits}")
        if self.source is not None:
            if self.source.kind == "zip" and any(f.member is None for f in self.files):
                raise DatasetError(f"data set {self.name!r}: a zip source needs DataFile.member for every file")
            if self.source.kind == "file" and len(self.files) != 1:
                raise DatasetError(f"data set {self.name!r}: a 'file' source serves exactly one file")

    @property
    def splits(self) -> tuple[str, ...]:
        return tuple(f.split for f in self.files)

    def file(self, split: str) -> DataFile:
        """The file of ``split`` ("validation", "val", "valid" and "dev" name the same split)."""
        for f in self.files:
            if f.split == split:
                return f
        if split in _VALID_SPLIT_NAMES:
            for f in self.files:
                if f.split in _VALID_SPLIT_NAMES:
                    return f
        raise DatasetError(f"data set {self.name!r} has no split {split!r}; its splits are {list(self.splits)}")


DATASETS: dict[str, Dataset] = {
    "wikitext-2-raw": Dataset(
        name="wikitext-2-raw",
        dirname="wikitext-2-raw",
        files=(
            DataFile("train", "wiki.train.raw", 10_940_747,
                     "6707892fa3788b5ab9ed78ab5ff37d9fe825f6011a2ad4fcd6a6d467f0e7da57",
                     member="wikitext-2-raw/wiki.train.raw"),
            DataFile("valid", "wiki.valid.raw", 1_146_846,
                     "4cd0f6876d07a413aa911261ff6d363c72d757d47f0fdd6015702014c89cb9c7",
                     member="wikitext-2-raw/wiki.valid.raw"),
            DataFile("test", "wiki.test.raw", 1_290_590,
                     "173c87a53759e0201f33e0ccf978e510c2042d7f2cb78229d9a50d79b9e7dd08",
                     member="wikitext-2-raw/wiki.test.raw"),
        ),
        source=Source(
            url="https://s3.amazonaws.com/research.metamind.io/wikitext/wikitext-2-raw-v1.zip",
            kind="zip",
            sha256="ef7edb566e3e2b2d31b29c1fdb0c89a4cc683597484c3dc2517919c615435a11",
            size_bytes=4_721_645,
        ),
        description="WikiText-2 raw (Merity et al., 2016), CC BY-SA",
    ),
    "sst2": Dataset(
        name="sst2",
        dirname="sst2",
        files=(
            DataFile("train", "train.tsv", 3_806_081,
                     "48eac26399f8456935f81dd9e3a745c1430adb6c62e233ccfe22db4a0d15d1d1", member="SST-2/train.tsv"),
            DataFile("dev", "dev.tsv", 94_931,
                     "54a9c12c77e402fc14d6a66a506f24d999f596b0176eb777c972cccc2f9cc4b0", member="SST-2/dev.tsv"),
            DataFile("test", "test.tsv", 197_335,
                     "69a938605609b3e6663b4487918fe1565eb293734e6e520d0366d1d412fd2a13", member="SST-2/test.tsv"),
        ),
        # GLUE publishes no checksum of SST-2.zip; every extracted file is checked instead.
        source=Source(url="https://dl.fbaipublicfiles.com/glue/data/SST-2.zip", kind="zip"),
        dir_aliases=("SST-2",),
        description="SST-2 from GLUE (Socher et al., 2013; Wang et al., 2018); test split unlabeled",
    ),
    "tinyshakespeare": Dataset(
        name="tinyshakespeare",
        dirname="tinyshakespeare",
        files=(
            DataFile("all", "input.txt", 1_115_394,
                     "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed"),
        ),
        source=Source(
            url="https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt",
            kind="file",
        ),
        description="Tiny Shakespeare (Karpathy's char-rnn), public domain",
    ),
}
"""The known data sets. Replace entries (or pass ``registry=``) to point at a mirror."""

_NAME_ALIASES = {"wikitext2": "wikitext-2-raw", "wikitext-2": "wikitext-2-raw", "sst-2": "sst2",
                 "tiny-shakespeare": "tinyshakespeare"}


def get_dataset(name: str, registry: Mapping[str, Dataset] | None = None) -> Dataset:
    """The registry entry of ``name`` (``wikitext2``, ``sst-2`` and ``tiny-shakespeare`` are accepted too)."""
    reg = DATASETS if registry is None else registry
    key = name if name in reg else _NAME_ALIASES.get(name.lower(), name.lower())
    if key not in reg:
        raise DatasetError(f"unknown data set {name!r}; known data sets: {', '.join(sorted(reg))}")
    return reg[key]


def default_cache_dir() -> Path:
    """The user cache of data sets: ``$XDG_CACHE_HOME/qslm/data``, by default ``~/.cache/qslm/data``."""
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "qslm" / "data"


# --- checksums ----------------------------------------------------------------------------------

# (resolved path, size, mtime_ns, inode, expected sha256) of files that hashed correctly.
_verified: set[tuple[str, int, int, int, str]] = set()


def _sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK_BYTES):
            h.update(chunk)
    return h.hexdigest()


def _verify_key(path: Path, df: DataFile) -> tuple[str, int, int, int, str]:
    st = path.stat()
    return (str(path.resolve()), st.st_size, st.st_mtime_ns, st.st_ino, df.sha256)


def _verify_file(path: Path, df: DataFile, ds: Dataset, where: str, in_cache: bool) -> None:
    key = _verify_key(path, df)
    if key in _verified:
        return
    size = key[1]
    actual = _sha256_of(path)
    if size == df.size_bytes and actual == df.sha256:
        _verified.add(key)
        return
    if in_cache:
        fix = (f"delete {path.parent} and run again: qslm will download a fresh copy into the cache "
               f"(or put the official files in a directory given by --data-dir / ${DATA_DIR_ENV})")
    else:
        fix = (f"replace it with the official file"
               + (f" (from {ds.source.url})" if ds.source is not None else "")
               + f", or remove it from {where} so that qslm looks in the next place "
               f"(the user cache, or a download)")
    raise ChecksumError(
        f"corrupt data file {path} (data set {ds.name!r}, split {df.split!r}, found via {where}):\n"
        f"  expected sha256 {df.sha256} ({df.size_bytes:,} bytes)\n"
        f"  actual   sha256 {actual} ({size:,} bytes)\n"
        f"Fix: {fix}."
    )


# --- resolution ---------------------------------------------------------------------------------


def _find_in(ds: Dataset, root: Path, root_itself: bool) -> tuple[Path | None, str]:
    """The directory under ``root`` that holds every file of ``ds``, or None and what was seen."""
    candidates = [root / ds.dirname, *(root / a for a in ds.dir_aliases)]
    if root_itself:
        candidates.append(root)
    best: tuple[int, Path, list[str]] | None = None  # (files present, dir, missing names)
    for d in candidates:
        if not d.is_dir():
            continue
        missing = [f.name for f in ds.files if not (d / f.name).is_file()]
        if not missing:
            return d, ""
        present = len(ds.files) - len(missing)
        if present and (best is None or present > best[0]):
            best = (present, d, missing)
    if best is not None:
        return None, f"{best[1]} lacks {', '.join(best[2])}"
    if not root.is_dir():
        return None, f"{root} does not exist"
    return None, f"no {ds.dirname}/ directory with {', '.join(f.name for f in ds.files)} in {root}"


def resolve(
    name: str,
    data_dir: str | os.PathLike[str] | None = None,
    download: bool = True,
    *,
    registry: Mapping[str, Dataset] | None = None,
    verify: bool = True,
    progress: bool = True,
) -> Path:
    """The directory that holds every file of data set ``name``, checked against its checksums.

    Looks in ``data_dir``, then ``$QSLM_DATA_DIR``, then the user cache, then (``download=True``)
    downloads into the user cache; see the module docstring. ``verify=False`` skips the sha256
    check (for a deliberately modified copy). ``progress`` shows a tqdm bar while downloading.

    Raises:
        DatasetError: unknown name.
        ChecksumError: a file found has the wrong size or sha256.
        DataNotFoundError: the data set is nowhere and downloading is disabled or impossible;
            :class:`DownloadError` (a subclass) when a download was tried and failed.
        Both not-found errors list every place looked in and how to provide the data.
    """
    ds = get_dataset(name, registry)
    cache = default_cache_dir()
    places: list[tuple[str, Path | None, bool, bool]] = []  # (label, root, root itself ok, is cache)
    places.append(("--data-dir (data_dir=)", None if data_dir is None else Path(data_dir).expanduser(), True, False))
    env = os.environ.get(DATA_DIR_ENV) or None
    places.append((f"${DATA_DIR_ENV}", None if env is None else Path(env).expanduser(), True, False))
    places.append(("the user cache", cache, False, True))

    looked: list[str] = []
    for label, root, root_itself, in_cache in places:
        if root is None:
            looked.append(f"{label}: not {'given' if label.startswith('--') else 'set'}")
            continue
        found, seen = _find_in(ds, root, root_itself)
        if found is None:
            looked.append(f"{label}: {seen}")
            continue
        if verify:
            for df in ds.files:
                _verify_file(found / df.name, df, ds, f"{label} ({root})", in_cache)
        return found

    if ds.source is None:
        looked.append("download: this data set has no download source")
        raise DataNotFoundError(_not_found_message(ds, looked, cache))
    if not download:
        looked.append(f"download from {ds.source.url}: disabled (download=False)")
        raise DataNotFoundError(_not_found_message(ds, looked, cache))
    try:
        return _download(ds, cache, progress)
    except DownloadError as e:
        looked.append(f"download from {ds.source.url}: failed: {e}")
        raise DownloadError(_not_found_message(ds, looked, cache)) from e


def _not_found_message(ds: Dataset, looked: list[str], cache: Path) -> str:
    files = ", ".join(f.name for f in ds.files)
    lines = [f"data set {ds.name!r} not found. Looked in, in this order:"]
    lines += [f"  {i}. {what}" for i, what in enumerate(looked, 1)]
    lines += [
        f"Provide it in one of these ways (DIR/{ds.dirname}/ must hold {files}):",
        "  - pass --data-dir DIR (data_dir=DIR in Python),",
        f"  - set {DATA_DIR_ENV}=DIR,",
        f"  - or let qslm download it (download=True; needs network access) into {cache}.",
    ]
    return "\n".join(lines)


# --- download -----------------------------------------------------------------------------------


def _fetch(url: str, dest: Path, desc: str, progress: bool, size_hint: int | None) -> tuple[str, int]:
    """Download ``url`` into ``dest``; returns (sha256, bytes). Raises DownloadError."""
    request = urllib.request.Request(url, headers={"User-Agent": "qslm"})
    h = hashlib.sha256()
    n = 0
    try:
        with urllib.request.urlopen(request, timeout=_DOWNLOAD_TIMEOUT_S) as resp, open(dest, "wb") as out:
            length = resp.headers.get("Content-Length")
            expected = int(length) if length is not None and length.isdigit() else None
            with tqdm(total=expected or size_hint, unit="B", unit_scale=True, unit_divisor=1024,
                      desc=desc, disable=not progress) as bar:
                while chunk := resp.read(_CHUNK_BYTES):
                    out.write(chunk)
                    h.update(chunk)
                    n += len(chunk)
                    bar.update(len(chunk))
    except urllib.error.HTTPError as e:
        raise DownloadError(f"HTTP {e.code} {e.reason} from {url}") from e
    except (urllib.error.URLError, http.client.HTTPException, OSError) as e:
        reason = e.reason if isinstance(e, urllib.error.URLError) else e
        raise DownloadError(f"could not download {url}: {type(e).__name__}: {reason}") from e
    if expected is not None and n != expected:
        raise DownloadError(f"incomplete download of {url}: got {n:,} of {expected:,} bytes")
    return h.hexdigest(), n


def _check_download(what: str, df: DataFile, sha: str, n: int) -> None:
    if n != df.size_bytes or sha != df.sha256:
        raise DownloadError(
            f"{what} does not match the official file: expected sha256 {df.sha256} ({df.size_bytes:,} bytes), "
            f"got sha256 {sha} ({n:,} bytes)"
        )


def _extract(archive: Path, ds: Dataset, out: Path) -> None:
    try:
        zf = zipfile.ZipFile(archive)
    except zipfile.BadZipFile as e:
        raise DownloadError(f"the download of {ds.source.url} is not a zip archive: {e}") from e
    with zf:
        names = set(zf.namelist())
        for df in ds.files:
            if df.member not in names:
                raise DownloadError(f"the archive {ds.source.url} has no member {df.member!r}")
            h = hashlib.sha256()
            n = 0
            try:
                with zf.open(df.member) as src, open(out / df.name, "wb") as dst:
                    while chunk := src.read(_CHUNK_BYTES):
                        dst.write(chunk)
                        h.update(chunk)
                        n += len(chunk)
            except (zipfile.BadZipFile, OSError, EOFError) as e:  # also zlib errors surface as these
                raise DownloadError(f"could not extract {df.member} from {ds.source.url}: {e}") from e
            _check_download(f"member {df.member} of {ds.source.url}", df, h.hexdigest(), n)


def _download(ds: Dataset, cache: Path, progress: bool) -> Path:
    """Download ``ds`` into ``cache / ds.dirname``; all or nothing."""
    src = ds.source
    assert src is not None
    try:
        cache.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".download-{ds.dirname}-", dir=cache))
    except OSError as e:
        raise DownloadError(f"cannot write to the cache {cache}: {e}") from e
    target = cache / ds.dirname
    try:
        out = staging / ds.dirname
        out.mkdir()
        if src.kind == "zip":
            archive = staging / "archive.zip"
            sha, n = _fetch(src.url, archive, f"downloading {ds.name}", progress, src.size_bytes)
            if src.sha256 is not None and sha != src.sha256:
                raise DownloadError(
                    f"the archive downloaded from {src.url} does not match the official one: "
                    f"expected sha256 {src.sha256}, got sha256 {sha} ({n:,} bytes)"
                )
            _extract(archive, ds, out)
        else:
            (df,) = ds.files
            sha, n = _fetch(src.url, out / df.name, f"downloading {ds.name}", progress, df.size_bytes)
            _check_download(f"the file downloaded from {src.url}", df, sha, n)
        try:
            os.rename(out, target)  # atomic; fails if target exists (a partial copy or a concurrent download)
        except OSError:
            target.mkdir(parents=True, exist_ok=True)
            for df in ds.files:  # each file appears whole or not at all
                os.replace(out / df.name, target / df.name)
    except OSError as e:
        raise DownloadError(f"could not store the download in {cache}: {e}") from e
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    for df in ds.files:  # just checked: spare the next resolve() the hashing
        _verified.add(_verify_key(target / df.name, df))
    return target


# --- loaders ------------------------------------------------------------------------------------


def data_file(
    name: str,
    split: str,
    data_dir: str | os.PathLike[str] | None = None,
    *,
    download: bool = True,
    registry: Mapping[str, Dataset] | None = None,
) -> Path:
    """Path of the file of ``split`` of data set ``name`` (resolved and checked as :func:`resolve`)."""
    ds = get_dataset(name, registry)
    df = ds.file(split)
    return resolve(name, data_dir, download, registry=registry) / df.name


def _read_utf8(path: Path) -> str:
    try:
        return path.read_bytes().decode("utf-8")  # exact bytes: no newline translation
    except UnicodeDecodeError as e:
        raise DatasetError(f"{path} is not UTF-8 text: {e}") from e


def load_wikitext2(
    split: str,
    data_dir: str | os.PathLike[str] | None = None,
    *,
    download: bool = True,
    registry: Mapping[str, Dataset] | None = None,
) -> str:
    """The raw text of WikiText-2 ``split`` ("train", "valid"/"validation", "test"), byte for byte.

    One paragraph or heading per line, each non-empty line starting with a space; see
    ``/work/shared/data/README.md``. The test split has 4,358 lines and 241,211
    whitespace-separated words.
    """
    return _read_utf8(data_file("wikitext-2-raw", split, data_dir, download=download, registry=registry))


def load_text(
    name: str,
    split: str,
    data_dir: str | os.PathLike[str] | None = None,
    *,
    download: bool = True,
    registry: Mapping[str, Dataset] | None = None,
) -> str:
    """The text of ``split`` of a plain-text data set (``wikitext-2-raw``, ``tinyshakespeare``).

    For a data set with a single file (Tiny Shakespeare), split "all" is the whole file, "train"
    its first :data:`TINYSHAKESPEARE_TRAIN_FRACTION` of characters and "valid" (or "validation",
    "val") the rest.
    """
    ds = get_dataset(name, registry)
    if ds.splits == ("all",) and split != "all":
        if split != "train" and split not in _VALID_SPLIT_NAMES:
            raise DatasetError(f"data set {ds.name!r} has splits 'all', 'train' and 'valid', not {split!r}")
        text = _read_utf8(data_file(ds.name, "all", data_dir, download=download, registry=registry))
        cut = int(len(text) * TINYSHAKESPEARE_TRAIN_FRACTION)
        return text[:cut] if split == "train" else text[cut:]
    if any(f.name.endswith(".tsv") for f in ds.files):
        raise DatasetError(f"data set {ds.name!r} is a table, not text; use load_sst2")
    return _read_utf8(data_file(ds.name, split, data_dir, download=download, registry=registry))


def read_sst2_tsv(path: str | os.PathLike[str]) -> list[tuple[str, int]]:
    """Read an SST-2 GLUE TSV file.

    ``train.tsv``/``dev.tsv`` (header ``sentence<TAB>label``) give ``(sentence, label)`` with label
    0 (negative) or 1 (positive). ``test.tsv`` (header ``index<TAB>sentence``) has no labels: it
    gives ``(sentence, -1)`` in file order (index 0, 1, ...). The files have no quoting, so each
    line is split on its one tab; the trailing space GLUE leaves before the tab is stripped.

    Raises DatasetError (with the line number) for a wrong header, a row without exactly two
    fields, a bad label or index.
    """
    path = Path(path)
    lines = _read_utf8(path).split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    lines = [ln[:-1] if ln.endswith("\r") else ln for ln in lines]
    if not lines:
        raise DatasetError(f"{path} is empty; expected an SST-2 TSV with a header line")
    header = lines[0].split("\t")
    if header == ["sentence", "label"]:
        labeled = True
    elif header == ["index", "sentence"]:
        labeled = False
    else:
        raise DatasetError(
            f"{path}:1: unexpected header {lines[0]!r}; SST-2 TSVs start with 'sentence\\tlabel' (train, dev) "
            f"or 'index\\tsentence' (test)"
        )
    rows: list[tuple[str, int]] = []
    for lineno, line in enumerate(lines[1:], start=2):
        fields = line.split("\t")
        if len(fields) != 2:
            raise DatasetError(f"{path}:{lineno}: expected 2 tab-separated fields, got {len(fields)}: {line!r}")
        if labeled:
            sentence, label = fields[0].strip(), fields[1].strip()
            if label not in ("0", "1"):
                raise DatasetError(f"{path}:{lineno}: label must be 0 or 1, got {label!r}")
            rows.append((sentence, int(label)))
        else:
            index, sentence = fields[0].strip(), fields[1].strip()
            if index != str(lineno - 2):
                raise DatasetError(f"{path}:{lineno}: expected index {lineno - 2}, got {index!r}")
            rows.append((sentence, -1))
    return rows


def load_sst2(
    split: str,
    data_dir: str | os.PathLike[str] | None = None,
    *,
    download: bool = True,
    registry: Mapping[str, Dataset] | None = None,
) -> list[tuple[str, int]]:
    """SST-2 ``split`` as ``(sentence, label)`` pairs; see :func:`read_sst2_tsv`.

    Splits: "train" (67,349 rows), "dev" (or "validation"; 872 rows, 444 positive: the split
    SST-2 results are reported on), "test" (1,821 rows, label -1: GLUE keeps its labels private).
    """
    return read_sst2_tsv(data_file("sst2", split, data_dir, download=download, registry=registry))
